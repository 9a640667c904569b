"""fusion.evaluation: the quick plan on the classical estimators gives finite numbers in the
documented JSON shape, a missing model is reported (not raised), and 30° of IMU misplacement
costs the nominal-mounting IMU path tens of degrees and the functionally calibrated one next
to nothing (same clip otherwise), while a subject's own stance offsets the latter."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from fusion.evaluation import (
    HELDOUT_SEED0,
    ROBUSTNESS,
    Clip,
    EvalPlan,
    batch_from_sequence,
    evaluate,
    plot_noise,
    score_angles,
)
from fusion.skeleton import ANGLES, SEGMENTS
from fusion.synth import generate_sequence


@pytest.fixture(scope="module")
def report() -> dict:
    return evaluate(
        models=("classical", "classical_nominal", "classical_video", "nosuchnet"),
        plan=EvalPlan.quick(),
        workers=2,
    )


def test_quick_report_shape_and_finite_numbers(report: dict, tmp_path) -> None:
    json.dumps(report)  # JSON-ready
    models = report["models"]
    assert (
        models["nosuchnet"]["status"] == "missing" and "nosuchnet" in models["nosuchnet"]["reason"]
    )
    for m in ("classical", "classical_video"):
        r = models[m]["rmse_deg"]
        assert {"lower", "upper", "knee_flexion_l"} <= set(r)
        assert np.isfinite(r["lower"]) and 0 < r["lower"] < 60, (m, r["lower"])
        assert np.isfinite(r["knee_flexion_l"])
        assert 0 < models[m]["coverage"]["lower"] <= 1
        assert {"normal", "pathological", "per_activity"} <= set(models[m])
    assert "pelvis_tilt" in models["classical_video"]["not_estimated"]
    # the head-to-head on the classical estimator's frames: its own score is unchanged, the
    # others answer at most what it answered
    own = models["classical"]
    assert own["on_classical_frames"]["lower"] == pytest.approx(own["rmse_deg"]["lower"])
    for m in ("classical_nominal", "classical_video"):
        paired = models[m]["on_classical_frames"]
        assert paired["coverage_lower"] <= own["coverage"]["lower"] + 1e-9
        assert np.isfinite(paired["lower"]) and paired["lower"] != models[m]["rmse_deg"]["lower"]
    assert report["heldout"]["seed_min"] == HELDOUT_SEED0
    noise = report["noise"]["misplacement_deg"]
    assert noise["levels"] == [0.0, 30.0] and set(noise["models"]) == {
        "classical",
        "classical_nominal",
        "classical_video",
    }
    assert set(report["robustness"]["models"]["classical"]) == set(EvalPlan.quick().robustness)
    # no video: the video estimator answers nothing, the IMU one is untouched
    rob = report["robustness"]["models"]
    assert rob["classical_video"]["no_video"]["coverage_lower"] == 0.0
    assert rob["classical"]["no_video"]["lower"] == pytest.approx(rob["classical"]["none"]["lower"])
    png = tmp_path / "noise.png"
    plot_noise(report, str(png))
    assert png.stat().st_size > 10_000


def test_misplacement_hurts_a_nominal_mounting_not_the_functional_calibration(
    report: dict,
) -> None:
    """σ 30° of sensor misplacement: the textbook calibrated-orientation method (mountings
    assumed) loses tens of degrees (quick plan: 1.8° → 25.6°), the functional calibration,
    which measures each mounting, next to nothing (1.6° → 1.6°)."""
    noise = report["noise"]["misplacement_deg"]["models"]
    nominal, functional = noise["classical_nominal"]["lower_mean"], noise["classical"]["lower_mean"]
    assert nominal[1] > nominal[0] + 10.0, nominal
    assert functional[1] < functional[0] + 1.0 and functional[1] < nominal[1] / 3, functional
    # joint-centre noise reaches the classical video path (it reads the given 3-D joints)
    v = report["noise"]["joint_noise_mm"]["models"]["classical_video"]["lower_mean"]
    assert v[1] > v[0] + 5.0, v


def test_a_stance_unlike_the_assumed_one_offsets_the_classical_angles(report: dict) -> None:
    """The classical calibration assumes the typical stance: subjects who stand σ 9° away
    from it (per leg angle) cost it several degrees (quick plan: 1.6° → 9.4°)."""
    res = report["noise"]["stance_deg"]
    assert res["levels"] == [0.0, 9.0]
    classical = res["models"]["classical"]["lower_mean"]
    assert classical[1] > classical[0] + 3.0, classical


def test_conditions_and_scores() -> None:
    seq = generate_sequence(replace(Clip(HELDOUT_SEED0 + 7, duration=2.0).params), HELDOUT_SEED0)
    a = seq.arrays
    b = batch_from_sequence(a, "imu_missing_2", seed=3)
    assert (~b.imu_mask).all(axis=0).sum() == 2 and b.joints3d is not None
    assert not batch_from_sequence(a, "no_imu").imu_mask.any()
    cam = batch_from_sequence(a, "camera_missing_1", seed=1)
    assert cam.joints3d is None and (~cam.keypoint_mask).all(axis=0).sum() == 1
    nv = batch_from_sequence(a, "no_video")
    assert not nv.keypoint_mask.any() and not nv.joints3d_mask.any()
    assert b.imu.shape[1] == len(SEGMENTS) and set(ROBUSTNESS) >= {"none", "no_imu"}
    with pytest.raises(ValueError, match=r"Clip\.seed"):
        Clip(5)
    with pytest.raises(ValueError, match="lack key 'imu'"):
        batch_from_sequence({k: v for k, v in a.items() if k != "imu"})
    # errors wrap at ±180 and NaN is "not answered"
    truth = np.zeros((3, len(ANGLES)))
    pred = np.full_like(truth, 350.0)
    pred[2] = np.nan
    s = score_angles(pred, truth, np.zeros(3, int), np.ones(3, bool))
    assert s["n"][-1][0] == 2 and s["sse"][-1][0] == pytest.approx(200.0)


def test_a_model_file_is_scored_under_its_label(tmp_path) -> None:
    """LABEL=PATH scores a neural model file beside the shipped one on the same clips: a copy
    of the shipped IMUNet gives the same numbers, and bad specs name what is wrong."""
    import shutil

    from fusion.evaluation import model_spec
    from fusion.nn.checkpoint import resolve

    copy = tmp_path / "candidate.pt"
    shutil.copyfile(resolve("imunet"), copy)
    assert model_spec(f"cand={copy}") == ("cand", {"estimator": "imunet", "weights": str(copy)})
    assert model_spec("classical") == ("classical", {})
    plan = EvalPlan(
        seeds_main=1,
        duration=3.0,
        activities=(),
        pathologies=(),
        misplacement_deg=(0.0,),
        joint_noise_mm=(),
        seeds_noise=0,
        robustness=("none",),
        seeds_robustness=0,
    )
    rep = evaluate(("imunet", f"cand={copy}"), plan, workers=1)
    a, b = rep["models"]["imunet"], rep["models"]["cand"]
    assert b["status"] == "ok" and np.isfinite(a["rmse_deg"]["lower"])
    assert b["rmse_deg"]["lower"] == pytest.approx(a["rmse_deg"]["lower"], abs=1e-9)
    with pytest.raises(ValueError, match=r"nothere\.pt"):
        evaluate((f"cand={tmp_path / 'nothere.pt'}",), plan, workers=1)
    with pytest.raises(ValueError, match="plain name"):
        model_spec(f"a b={copy}")
    with pytest.raises(ValueError, match="named twice"):
        evaluate(("imunet", f"imunet={copy}"), plan, workers=1)
