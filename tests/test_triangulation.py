"""Confidence-weighted multi-view DLT triangulation."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.camera import PinholeCamera, default_rig
from fusion.triangulation import projection_matrices, triangulate, triangulate_keypoints


def _detections(cams, X: np.ndarray, conf: float = 1.0) -> np.ndarray:
    """World points (N, J, 3) → detections (N, C, J, 3) as a perfect detector reports them."""
    uv = np.stack([c.project(X) for c in cams], axis=1)
    return np.concatenate([uv, np.full((*uv.shape[:-1], 1), conf)], axis=-1)


@pytest.fixture(scope="module")
def points() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.uniform([-0.5, -0.5, 0.05], [0.5, 0.5, 1.9], (40, 17, 3))


def test_exact_views_give_the_points_back(points: np.ndarray) -> None:
    cams = default_rig(4)
    tri = triangulate_keypoints(cams, _detections(cams, points))
    np.testing.assert_allclose(tri.points, points, atol=1e-6)
    assert (tri.n_views == 4).all() and np.nanmax(tri.error_px) < 1e-4


def test_lens_distortion_is_undone_first(points: np.ndarray) -> None:
    base = default_rig(3)
    cams = [
        PinholeCamera(c.name, c.K, c.R, c.t, dist=np.array([-0.12, 0.03, 0.001, -0.0005, 0.0]))
        for c in base
    ]
    det = _detections(cams, points)
    tri = triangulate_keypoints(cams, det)
    np.testing.assert_allclose(tri.points, points, atol=1e-4)
    # ignoring the distortion would be visibly wrong
    naive = triangulate_keypoints(base, det)
    assert np.nanmax(np.linalg.norm(naive.points - points, axis=-1)) > 1e-3


def test_pixel_noise_and_confidence_weights(points: np.ndarray) -> None:
    cams = default_rig(4)
    rng = np.random.default_rng(1)
    det = _detections(cams, points)
    det[..., :2] += rng.normal(0, 4.0, det[..., :2].shape)  # a good 2-D detector
    err = np.linalg.norm(triangulate_keypoints(cams, det).points - points, axis=-1)
    assert np.sqrt(np.mean(err**2)) < 0.02  # 1080p, 6 m away: a few mm per px
    # one camera badly off but flagged unsure: the weights keep it out of the way
    bad = det.copy()
    bad[:, 0, :, :2] += 60.0
    bad[:, 0, :, 2] = 0.05
    tri = triangulate_keypoints(cams, bad, min_confidence=0.0, outlier_px=None)
    assert np.sqrt(np.mean(np.linalg.norm(tri.points - points, axis=-1) ** 2)) < 0.03
    unweighted = bad.copy()
    unweighted[..., 2] = 1.0
    tri = triangulate_keypoints(cams, unweighted, outlier_px=None)
    assert np.sqrt(np.mean(np.linalg.norm(tri.points - points, axis=-1) ** 2)) > 0.03


def test_outlier_view_is_dropped(points: np.ndarray) -> None:
    cams = default_rig(4)
    det = _detections(cams, points)
    det[:, 2, 5, :2] += (150.0, -80.0)  # a mis-detection in one view, full confidence
    kept = triangulate_keypoints(cams, det, outlier_px=None)
    dropped = triangulate_keypoints(cams, det, outlier_px=20.0)
    assert np.linalg.norm(kept.points[:, 5] - points[:, 5], axis=-1).min() > 0.01
    np.testing.assert_allclose(dropped.points[:, 5], points[:, 5], atol=1e-6)
    assert (dropped.n_views[:, 5] == 3).all() and (dropped.n_views[:, 4] == 4).all()


def test_too_few_views_and_masked_cameras(points: np.ndarray) -> None:
    cams = default_rig(3)
    det = _detections(cams, points)
    det[:, 1:, 3, 2] = 0.0  # joint 3 only seen by camera 0
    mask = np.ones((len(points), 3), bool)
    mask[:10, 2] = False  # camera 2 drops its first 10 frames
    tri = triangulate_keypoints(cams, det, mask)
    assert np.isnan(tri.points[:, 3]).all() and (tri.n_views[:, 3] <= 1).all()
    np.testing.assert_allclose(tri.points[:, 4], points[:, 4], atol=1e-6)
    assert (tri.n_views[:10, 4] == 2).all() and (tri.n_views[10:, 4] == 3).all()
    with pytest.raises(ValueError, match="keypoint views for 2 cameras"):
        triangulate_keypoints(cams[:2], det)
    with pytest.raises(ValueError, match="projection matrices"):
        triangulate(projection_matrices(cams[:2]), det[..., :2], det[..., 2])


def _one_view_at_a_time(P, uv, w, outlier_px):
    """The outlier pass written plainly: one DLT per view left out (what `triangulate` does
    in one batched solve)."""
    from fusion.triangulation import _solve_and_score

    N, C, J, _ = uv.shape
    w = np.where(np.isfinite(uv).all(axis=-1) & (w > 0), w, 0.0)
    uvm = np.where(w[..., None] > 0, uv, 0.0).transpose(0, 2, 1, 3).reshape(N * J, C, 2)
    wm = w.transpose(0, 2, 1).reshape(N * J, C)
    used = wm > 0
    X = np.full((N * J, 3), np.nan)
    todo = np.flatnonzero(used.sum(axis=1) >= 2)
    X[todo], _, e_all = _solve_and_score(P, uvm[todo], wm[todo], used[todo])
    e = e_all
    while len(todo):
        worst = np.nanmax(np.where(np.isfinite(e), e, -1.0), axis=1)
        keep = (used[todo].sum(axis=1) >= 3) & (worst > outlier_px)
        todo = todo[keep]
        if not len(todo):
            break
        best_err, best_X = np.full(len(todo), np.inf), X[todo].copy()
        best_used, best_e = used[todo].copy(), np.full((len(todo), C), np.nan)
        for c in range(C):
            trial = used[todo].copy()
            can = trial[:, c].copy()
            trial[:, c] = False
            Xc, ec, Ec = _solve_and_score(P, uvm[todo], wm[todo], trial)
            better = can & (ec < best_err)
            best_err = np.where(better, ec, best_err)
            best_X[better], best_used[better], best_e[better] = (
                Xc[better],
                trial[better],
                Ec[better],
            )
        changed = (best_used != used[todo]).any(axis=1)
        X[todo], used[todo] = best_X, best_used
        todo, e = todo[changed], best_e[changed]
    return X.reshape(N, J, 3), used.sum(axis=1).reshape(N, J)


def test_outlier_pass_and_frame_batches_change_no_number(points: np.ndarray) -> None:
    """Many mis-detections: the batched outlier pass gives the one-view-at-a-time numbers,
    and triangulating frames together gives the frame-by-frame numbers, bit for bit (the
    live estimator triangulates all its subjects' frames in one call)."""
    cams = default_rig(4)
    rng = np.random.default_rng(2)
    det = _detections(cams, points)
    det[..., :2] += rng.normal(0, 2.0, det[..., :2].shape)
    bad = rng.random(det.shape[:3]) < 0.15
    det[bad, :2] += rng.normal(0, 120.0, (int(bad.sum()), 2))
    det[..., 2] = rng.uniform(0.2, 1.0, det.shape[:3])
    P = projection_matrices(cams)
    tri = triangulate(P, det[..., :2], det[..., 2], outlier_px=10.0)
    X, n = _one_view_at_a_time(P, det[..., :2], det[..., 2], 10.0)
    assert (tri.n_views < 4).sum() > 50  # the pass dropped views
    np.testing.assert_array_equal(tri.points, X)
    np.testing.assert_array_equal(tri.n_views, n)
    mask = rng.random(det.shape[:2]) > 0.1
    together = triangulate_keypoints(cams, det, mask, outlier_px=10.0)
    for a in range(0, len(det), 7):
        part = triangulate_keypoints(cams, det[a : a + 7], mask[a : a + 7], outlier_px=10.0)
        np.testing.assert_array_equal(part.points, together.points[a : a + 7])
        np.testing.assert_array_equal(part.error_px, together.error_px[a : a + 7])
