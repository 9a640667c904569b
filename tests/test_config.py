"""Config loading and validation: every error names the file and the dotted key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from fusion.skeleton import SEGMENTS
from services.cli import main
from services.config import (
    DEFAULT_CONFIG,
    ConfigError,
    SimulateConfig,
    load_config,
    parse_config,
    simulated_subjects,
)


def default_data() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def write(tmp_path: Path, data: object, name: str = "lab.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error_for(tmp_path: Path, data: object) -> ConfigError:
    path = write(tmp_path, data)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value), "the error must name the file"
    return info.value


def test_default_config_is_the_simulated_lab() -> None:
    cfg = load_config()
    assert cfg.source == str(DEFAULT_CONFIG)
    assert cfg.simulate.enabled and cfg.simulate.subjects == 1
    assert cfg.simulate.imu_rate == 100.0 and cfg.simulate.camera_rate == 30.0
    assert cfg.simulate.n_cameras == 4
    assert len(cfg.subjects) == 1
    subj = cfg.subjects[0]
    assert set(subj.imu) == set(SEGMENTS)
    assert all(s is not None and s.name == f"sim-s0-{seg}" for seg, s in subj.imu.items())
    assert [c.endpoint for c in subj.cameras] == ["auto"] * 4
    assert cfg.model.rate_hz == 60.0 and cfg.model.estimator == "fusionnet"
    assert cfg.model.lookahead == 0
    assert cfg.metrics.host == "127.0.0.1" and cfg.metrics.port == 9310
    assert cfg.outputs.lsl and cfg.outputs.zmq.startswith("tcp://")
    assert cfg.sync.max_wait_ms > 0


def test_unknown_key_top_level(tmp_path: Path) -> None:
    data = default_data()
    data["metrcs"] = {"port": 1}
    err = error_for(tmp_path, data)
    assert err.key == "metrcs" and "unknown key" in str(err)


def test_unknown_key_nested(tmp_path: Path) -> None:
    data = default_data()
    data["sync"]["max_wiat_ms"] = 10
    err = error_for(tmp_path, data)
    assert err.key == "sync.max_wiat_ms"
    assert "max_wait_ms" in str(err), "the message lists the keys that exist there"


def test_unknown_key_inside_a_stream(tmp_path: Path) -> None:
    data = default_data()
    data["subjects"][0]["imu"]["head"]["nmae"] = "x"
    err = error_for(tmp_path, data)
    assert err.key == "subjects[0].imu.head.nmae"


@pytest.mark.parametrize(
    ("path", "value", "key"),
    [
        (("model", "rate_hz"), "fast", "model.rate_hz"),
        (("metrics", "port"), 9310.5, "metrics.port"),
        (("simulate", "enabled"), "yes", "simulate.enabled"),
        (("queues", "max_depth"), True, "queues.max_depth"),
        (("sync", "wait_for"), "imu", "sync.wait_for"),
        (("model", "options"), [1, 2], "model.options"),
    ],
)
def test_wrong_type(tmp_path: Path, path: tuple[str, str], value: object, key: str) -> None:
    data = default_data()
    data[path[0]][path[1]] = value
    err = error_for(tmp_path, data)
    assert err.key == key
    assert repr(value) in str(err)


def test_missing_stream_is_an_error_null_is_not(tmp_path: Path) -> None:
    data = default_data()
    del data["subjects"][0]["imu"]["foot_r"]
    err = error_for(tmp_path, data)
    assert err.key == "subjects[0].imu.foot_r" and "missing stream" in str(err)

    data["subjects"][0]["imu"]["foot_r"] = None  # explicitly no sensor there
    cfg = load_config(write(tmp_path, data, "ok.yaml"))
    assert cfg.subjects[0].imu["foot_r"] is None


def test_multi_sensor_stream_covers_its_segments(tmp_path: Path) -> None:
    data = default_data()
    imu = data["subjects"][0]["imu"]
    for seg in ("shank_l", "foot_l"):
        del imu[seg]
    imu["thigh_l"] = {"name": "left-leg-hub", "segments": ["thigh_l", "shank_l", "foot_l"]}
    cfg = load_config(write(tmp_path, data))
    assert cfg.subjects[0].imu["thigh_l"].segments == ["thigh_l", "shank_l", "foot_l"]

    imu["thigh_l"]["segments"] = ["thigh_l", "shin_l"]
    err = error_for(tmp_path, data)
    assert err.key == "subjects[0].imu.thigh_l.segments" and "shin_l" in str(err)


def test_missing_required_key(tmp_path: Path) -> None:
    data = default_data()
    del data["subjects"][0]["id"]
    err = error_for(tmp_path, data)
    assert err.key == "subjects[0].id" and "missing required key" in str(err)


def test_selector_needs_a_field_and_endpoints_are_checked(tmp_path: Path) -> None:
    data = default_data()
    data["subjects"][0]["imu"]["head"] = {}
    assert error_for(tmp_path, data).key == "subjects[0].imu.head"

    data = default_data()
    data["subjects"][0]["cameras"][1]["endpoint"] = "localhost:5555"
    assert error_for(tmp_path, data).key == "subjects[0].cameras[1].endpoint"

    data = default_data()
    data["simulate"]["enabled"] = False
    err = error_for(tmp_path, data)  # "auto" endpoints only exist in the simulated lab
    assert err.key == "subjects[0].cameras[0].endpoint"


def test_cross_field_rules(tmp_path: Path) -> None:
    data = default_data()
    data["simulate"]["subjects"] = 2
    assert error_for(tmp_path, data).key == "subjects"

    data = default_data()
    data["sync"]["wait_for"] = ["imu", "radar"]
    assert error_for(tmp_path, data).key == "sync.wait_for[1]"

    data = default_data()
    data["simulate"]["stance_sd_deg"] = 45.0
    assert error_for(tmp_path, data).key == "simulate.stance_sd_deg"

    data = default_data()
    data["subjects"].append(copy.deepcopy(data["subjects"][0]))
    data["simulate"]["subjects"] = 2
    assert error_for(tmp_path, data).key == "subjects[1].id"


def test_not_yaml_and_not_a_file(tmp_path: Path) -> None:
    err = error_for(tmp_path, "model: [unclosed\n")
    assert "not valid YAML" in str(err)
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_config(missing)
    err = error_for(tmp_path, "- a list\n- not a mapping\n")
    assert "expected a mapping" in str(err)


def test_empty_config_means_defaults_and_a_derived_lab() -> None:
    cfg = parse_config({}, "empty")
    assert cfg.simulate.enabled and cfg.subjects == []
    subs = simulated_subjects(SimulateConfig(subjects=2, imu_stream_prefix="x"), "tag")
    assert [s.id for s in subs] == ["s0", "s1"]
    assert subs[1].imu["foot_l"].name == "x-s1-foot_l"
    assert subs[1].imu["foot_l"].source_id == "x-s1-foot_l@tag"
    assert [c.camera for c in subs[0].cameras] == ["s0-cam0", "s0-cam1", "s0-cam2", "s0-cam3"]


def test_cli_reports_bad_config_and_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = default_data()
    data["model"]["lookahead"] = "two"
    path = write(tmp_path, data)
    assert main(["start", "--config", str(path), "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and "model.lookahead" in err


@pytest.mark.parametrize("value", ["auto", 1, 4])
def test_inference_actors_auto_or_a_count(tmp_path: Path, value: object) -> None:
    data = default_data()
    data["model"]["inference_actors"] = value
    assert load_config(write(tmp_path, data)).model.inference_actors == value


def test_inference_actors_default_is_auto() -> None:
    assert load_config().model.inference_actors == "auto"
    assert parse_config({}).model.inference_actors == "auto"


@pytest.mark.parametrize("value", [0, -2, "many", "3", True, 1.5, [2]])
def test_inference_actors_bad_values_name_the_key(tmp_path: Path, value: object) -> None:
    data = default_data()
    data["model"]["inference_actors"] = value
    err = error_for(tmp_path, data)
    assert err.key == "model.inference_actors"
    assert repr(value) in str(err)


def test_embedded_default_model_matches_the_dataclass_default() -> None:
    """configs/default.yaml and ModelConfig's defaults say the same (FusionNet, causal):
    a config that leaves `model:` out runs what the default lab runs."""
    import dataclasses

    from_yaml = dataclasses.asdict(load_config().model)
    assert from_yaml == dataclasses.asdict(parse_config({}).model)
    assert from_yaml["estimator"] == "fusionnet" and from_yaml["lookahead"] == 0


def test_model_nice_is_a_niceness(tmp_path: Path) -> None:
    assert load_config().model.nice == -20
    data = default_data()
    data["model"]["nice"] = -30
    err = error_for(tmp_path, data)
    assert err.key == "model.nice" and "-20..19" in str(err)


@pytest.mark.parametrize(
    ("section", "name", "value"),
    [
        ("sync", "video_tolerance_ms", -5.0),  # every camera masked on every tick
        ("sync", "video_tolerance_ms", 0.0),
        ("sync", "imu_max_gap_ms", 0.0),
        ("sync", "stale_after_ms", float("nan")),
        ("sync", "max_wait_ms", -1.0),
        ("sync", "max_hold_ms", float("inf")),
        ("metrics", "flush_ms", 0.0),
        ("model", "rate_hz", float("nan")),  # the actors died in their constructors
        ("simulate", "jitter_ms", -1.0),
        ("simulate", "push_period_ms", 0.0),  # a busy loop
        ("simulate", "imu_rate", float("inf")),
    ],
)
def test_numbers_out_of_range_name_the_key(
    tmp_path: Path, section: str, name: str, value: float
) -> None:
    data = default_data()
    data[section][name] = value
    err = error_for(tmp_path, data)
    assert err.key == f"{section}.{name}"
    assert "must be a finite number" in str(err)


def test_zero_waits_are_allowed(tmp_path: Path) -> None:
    data = default_data()
    data["sync"].update(max_wait_ms=0.0, peer_wait_ms=0.0, max_hold_ms=0.0)
    assert load_config(write(tmp_path, data)).sync.max_wait_ms == 0.0


def test_a_yaml_exponent_without_a_dot_gets_a_hint(tmp_path: Path) -> None:
    text = DEFAULT_CONFIG.read_text().replace("video_tolerance_ms: 60.0", "video_tolerance_ms: 6e1")
    err = error_for(tmp_path, text)
    assert err.key == "sync.video_tolerance_ms"
    assert "write 1.0e9" in str(err)


def test_an_unknown_simulated_activity_names_the_key(tmp_path: Path) -> None:
    data = default_data()
    data["simulate"]["activity"] = "dance"
    err = error_for(tmp_path, data)
    assert err.key == "simulate.activity" and "start_stop" in str(err)
