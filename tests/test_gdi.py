"""GDI and GPS (fusion/gdi.py) on synthetic typically-developing and pathological strides."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.gdi import (
    GDI_VARIABLES,
    N_FEATURES,
    GdiModel,
    build_default_basis,
    default_basis_path,
    gps,
    load_default_model,
    sample_td_strides,
    stride_curves,
)
from fusion.normative import load_default_normative
from fusion.skeleton import ANGLE_INDEX, ANGLES

KNEE = GDI_VARIABLES.index("knee_flexion")


@pytest.fixture(scope="module")
def model() -> GdiModel:
    return load_default_model()


@pytest.fixture(scope="module")
def td_heldout(model) -> np.ndarray:
    """TD strides from a seed the shipped basis was not fitted on."""
    rng = np.random.default_rng(12345)
    scale = float(model.meta["td_scale"])
    return sample_td_strides(load_default_normative(), 300, rng, scale=scale)


def test_shipped_basis_is_what_the_seeded_builder_makes(model) -> None:
    """fusion/data/gdi_basis.npz is reproducible from build_default_basis() (seeded)."""
    rebuilt = build_default_basis()
    stale = "shipped GDI basis is stale (normative sampler changed?): run python -m fusion.gdi"
    np.testing.assert_allclose(rebuilt.components, model.components, atol=1e-10, err_msg=stale)
    np.testing.assert_allclose(rebuilt.centre, model.centre, atol=1e-10)
    assert np.isclose(rebuilt.ln_d_mean, model.ln_d_mean) and np.isclose(rebuilt.ln_d_sd, model.ln_d_sd)  # fmt: skip
    assert model.components.shape == (N_FEATURES, len(GDI_VARIABLES) * 51)
    np.testing.assert_allclose(model.components @ model.components.T, np.eye(N_FEATURES), atol=1e-9)
    assert "synthetic" in model.meta["source"] and model.meta["seed"] == "2008"


def test_typical_strides_score_100_plus_minus_10(model, td_heldout) -> None:
    g = model.gdi(td_heldout)
    assert abs(g.mean() - 100) < 2.5 and 7.5 < g.std() < 12.5, (g.mean(), g.std())
    assert np.mean(np.abs(g - 100) < 20) > 0.9


def test_crouch_scores_clearly_lower(model, td_heldout) -> None:
    """Knee flexion +30° throughout (crouch) costs every TD stride tens of GDI points."""
    crouch = td_heldout.copy()
    crouch[:, KNEE] += 30
    drop = model.gdi(td_heldout) - model.gdi(crouch)
    assert model.gdi(crouch).mean() < 70 and np.median(drop) > 30, (model.gdi(crouch).mean(), drop)
    assert np.all(drop > 0)
    mean_crouch = model.reference.copy()
    mean_crouch[KNEE] += 30
    assert model.gdi(mean_crouch) < 75


def test_gps_of_the_mean_is_zero_and_scales(model) -> None:
    ref = model.reference
    assert model.gps(ref) == 0.0
    shifted = ref.copy()
    shifted[KNEE] += 10  # one of 9 variables off by 10° everywhere: GPS = sqrt(100 / 9)
    assert np.isclose(model.gps(shifted), 10 / 3)
    assert np.isclose(gps(shifted, ref), 10 / 3)
    np.testing.assert_allclose(model.gvs(shifted), np.where(np.arange(9) == KNEE, 10.0, 0.0))


def test_fit_centres_the_td_population_on_100() -> None:
    rng = np.random.default_rng(0)
    strides = rng.normal(size=(400, 9, 51)).cumsum(axis=2)
    m = GdiModel.fit(strides, n_features=5)
    g = m.gdi(strides)
    assert np.isclose(g.mean(), 100, atol=1e-9) and np.isclose(g.std(ddof=1), 10, atol=1e-9)
    with pytest.raises(ValueError, match="cannot fit"):
        GdiModel.fit(strides[:4], n_features=5)
    with pytest.raises(ValueError, match="shape"):
        m.gdi(np.zeros((9, 50)))


def test_save_load_round_trip(tmp_path, model) -> None:
    p = tmp_path / "b.npz"
    model.save(p)
    back = GdiModel.load(p)
    np.testing.assert_array_equal(back.components, model.components)
    assert back.meta == model.meta
    assert default_basis_path().is_file()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        GdiModel.load(tmp_path / "missing.npz")


def test_stride_curves_resample_and_mirror_the_left_pelvis() -> None:
    t = np.linspace(0, 2, 121)
    angles = np.zeros((len(t), len(ANGLES)))
    angles[:, ANGLE_INDEX["pelvis_obliquity"]] = 5.0
    angles[:, ANGLE_INDEX["pelvis_rotation"]] = t  # linear: exact under resampling
    angles[:, ANGLE_INDEX["knee_flexion_l"]] = 10 * t
    right = stride_curves(t, angles, 0.5, 1.5, "r")
    left = stride_curves(t, angles, 0.5, 1.5, "l")
    pct = np.linspace(0.5, 1.5, 51)
    np.testing.assert_allclose(right[GDI_VARIABLES.index("pelvis_rotation")], pct)
    np.testing.assert_allclose(left[GDI_VARIABLES.index("pelvis_rotation")], -pct)
    assert left[GDI_VARIABLES.index("pelvis_obliquity")][0] == -5.0
    np.testing.assert_allclose(left[KNEE], 10 * pct)
    assert np.isnan(stride_curves(t, angles, 1.5, 2.5, "r")).all()  # not covered
    gap = angles.copy()
    gap[50:70, ANGLE_INDEX["knee_flexion_r"]] = np.nan
    assert np.isnan(stride_curves(t, gap, 0.5, 1.5, "r")[KNEE]).any()
    with pytest.raises(ValueError, match="side"):
        stride_curves(t, angles, 0.5, 1.5, "x")
