"""fusion.estimators.gyro_refine: a model's rotations steadied by the gyros, on synthetic walks
whose true segment rotations and sensor mountings are known."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter1d

from fusion.angles import relative_rotation
from fusion.estimators.gyro_refine import GyroRefineConfig, GyroRefiner
from fusion.evaluation import GROUPS
from fusion.nn.features import angles_from_output, heading_free_rotations
from fusion.orientation import matrix_to_rotvec, rotvec_to_matrix
from fusion.skeleton import ANGLE_INDEX, LEG_SEGMENTS, SEGMENT_INDEX, SEGMENTS
from fusion.synth import SequenceParams, generate_sequence

LOWER = [ANGLE_INDEX[a] for a in GROUPS["lower"]]
P = SEGMENT_INDEX["pelvis"]


@pytest.fixture(scope="module")
def walk() -> dict[str, np.ndarray]:
    """12 s of walking at the default (paper's) noise: misplaced, biased, noisy IMUs."""
    a = generate_sequence(SequenceParams(activity="walk", duration=12.0, n_cameras=0), 4242).arrays
    truth = heading_free_rotations(a["rotations"], a["heading"]).astype(np.float64)
    gyro = np.where(a["imu_mask"][..., None], a["imu"][..., :3], np.nan)
    return {"t": a["t"], "truth": truth, "gyro": gyro, "mounting": a["imu_mounting"]}


def _wander(truth: np.ndarray, deg: float, seed: int = 0, ticks: float = 20) -> np.ndarray:
    """`truth` with a wandering error per segment (Gaussian-smoothed over `ticks`, `deg` RMS
    per axis): the kind of error a windowed model makes."""
    rng = np.random.default_rng(seed)
    w = gaussian_filter1d(rng.normal(size=(*truth.shape[:2], 3)), ticks, axis=0)
    w *= np.radians(deg) / w.std()
    return truth @ rotvec_to_matrix(w)


def _run(refiner: GyroRefiner, t, rot, gyro, subject: str = "s") -> np.ndarray:
    return np.stack(
        [
            refiner.step([subject], t[i : i + 1], rot[i : i + 1], gyro[i : i + 1])[0]
            for i in range(len(t))
        ]
    )


def _lower_rmse(rot: np.ndarray, truth: np.ndarray, after: int = 60) -> float:
    e = angles_from_output(rot)[after:, LOWER] - angles_from_output(truth)[after:, LOWER]
    return float(np.sqrt(np.nanmean(e**2)))


def test_rotvec_helpers_round_trip() -> None:
    rng = np.random.default_rng(0)
    v = rng.normal(size=(500, 3))
    v *= rng.uniform(0, np.pi - 1e-3, size=(500, 1)) / np.linalg.norm(v, axis=1, keepdims=True)
    v[:3] *= 1e-9  # the small-angle branch
    R = rotvec_to_matrix(v)
    assert np.allclose(R @ np.swapaxes(R, -1, -2), np.eye(3), atol=1e-12)
    assert np.allclose(matrix_to_rotvec(R), v, atol=1e-9)


def test_an_exact_model_stays_exact_and_the_mountings_are_learnt(walk) -> None:
    """Fed the true rotations, the filter must not spoil them, and the mounting it fits from
    the model's turns is the sensor's real one (σ 13.5° misplacement in this walk) wherever
    the segment turns enough to show it."""
    g = GyroRefiner()
    out = _run(g, walk["t"], walk["truth"], walk["gyro"])
    assert _lower_rmse(out, walk["truth"]) < 0.3
    fitted = g.mounting("s")
    err = {
        seg: np.degrees(
            np.linalg.norm(matrix_to_rotvec(M.T @ walk["mounting"][SEGMENT_INDEX[seg]]))
        )
        for seg, M in fitted.items()
    }
    assert set(err) == {"pelvis", *LEG_SEGMENTS}
    assert max(err.values()) < 1.0, err


@pytest.mark.parametrize(("ticks", "most"), [(5, 0.7), (20, 0.9)])
def test_a_wandering_model_error_is_reduced(walk, ticks: float, most: float) -> None:
    """The faster the model's error wanders against `tau_s` (0.5 s), the more goes."""
    noisy = _wander(walk["truth"], 3.0, ticks=ticks)
    before = _lower_rmse(noisy, walk["truth"], after=6 * 60)  # after the filter has warmed up
    out = _run(GyroRefiner(), walk["t"], noisy, walk["gyro"])
    after = _lower_rmse(out, walk["truth"], 6 * 60)
    assert after < most * before, (before, after)
    legs = np.isin(SEGMENTS, LEG_SEGMENTS)
    np.testing.assert_array_equal(out[:, ~legs], noisy[:, ~legs])  # the rest: the model's


def test_missing_gyro_and_gaps_fall_back_to_the_model(walk) -> None:
    """A segment whose gyro is missing answers the model's rotation (relative to the model's
    pelvis) at that tick; a tick gap restarts every segment; nothing turns NaN."""
    noisy = _wander(walk["truth"], 3.0, seed=1)
    gyro = walk["gyro"].copy()
    shank = SEGMENT_INDEX["shank_l"]
    gyro[400:430, shank] = np.nan
    t = walk["t"].copy()
    t[500:] += 0.5  # a half-second hole in the ticks
    out = _run(GyroRefiner(), t, noisy, gyro)
    assert np.isfinite(out).all()
    rel_out = relative_rotation(out[:, P], out[:, shank])
    rel_net = relative_rotation(noisy[:, P], noisy[:, shank])
    assert np.allclose(rel_out[400:431], rel_net[400:431], atol=1e-6)  # and the tick after
    assert not np.allclose(rel_out[380:400], rel_net[380:400], atol=1e-3)  # refined before
    assert np.allclose(out[500], noisy[500], atol=1e-6)
    assert np.allclose(out[:, P], noisy[:, P])  # the pelvis stays the model's


def test_subjects_are_independent_and_batched_alike(walk) -> None:
    """Two subjects stepped together give what each gives alone, whatever their rows."""
    a_rot, b_rot = _wander(walk["truth"], 3.0, 2), _wander(walk["truth"], 2.0, 3)
    b_gyro = walk["gyro"][::-1].copy()  # any other stream
    t, n = walk["t"], 200
    alone_a = _run(GyroRefiner(), t[:n], a_rot[:n], walk["gyro"][:n], "a")
    alone_b = _run(GyroRefiner(), t[:n], b_rot[:n], b_gyro[:n], "b")
    g = GyroRefiner()
    g.step(["x"], t[:1], a_rot[:1], walk["gyro"][:1])  # a row before theirs
    g.reset("x")
    both = [
        g.step(
            ["b", "a"] if i % 2 else ["a", "b"],
            t[i : i + 1].repeat(2),
            *_pair(i, a_rot, b_rot, walk["gyro"], b_gyro),
        )
        for i in range(n)
    ]
    got_a = np.stack([o[0] if i % 2 == 0 else o[1] for i, o in enumerate(both)])
    got_b = np.stack([o[1] if i % 2 == 0 else o[0] for i, o in enumerate(both)])
    assert np.allclose(got_a, alone_a, atol=1e-12) and np.allclose(got_b, alone_b, atol=1e-12)


def _pair(i, a_rot, b_rot, a_g, b_g):
    first, second = ((a_rot, a_g), (b_rot, b_g)) if i % 2 == 0 else ((b_rot, b_g), (a_rot, a_g))
    return np.stack([first[0][i], second[0][i]]), np.stack([first[1][i], second[1][i]])


@pytest.mark.parametrize(
    "kw",
    [
        {"tau_s": 0.0},
        {"span": 0},
        {"span": 2.5},
        {"bias_gain": -1.0},
        {"max_gap_s": np.nan},
        {"segments": ("tail",)},
        {"segments": ("pelvis", "thigh_l")},
    ],
)
def test_bad_settings_are_named(kw) -> None:
    with pytest.raises(ValueError, match=next(iter(kw))):
        GyroRefineConfig(**kw)
