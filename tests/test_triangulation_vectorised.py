"""The triangulation's eigen-solver (inverse iteration on the squared inverse, LAPACK eigh as
fallback) against plain `np.linalg.eigh`, on DLT systems of a noisy 4-camera rig with
mis-detections and on matrices built to need the fallback."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from fusion import triangulation
from fusion.camera import default_rig
from fusion.triangulation import (
    _smallest_eigenvectors,
    _unit_rows,
    projection_matrices,
    triangulate_keypoints,
)


def _eigh_smallest(G: np.ndarray) -> np.ndarray:
    return np.linalg.eigh(G)[1][..., 0]


def _same_direction(v: np.ndarray, ref: np.ndarray, atol: float) -> None:
    sign = np.sign(np.einsum("mi,mi->m", v, ref))[:, None]
    np.testing.assert_allclose(v * sign, ref, rtol=0, atol=atol)


@pytest.fixture(scope="module")
def noisy() -> tuple[list, np.ndarray, np.ndarray]:
    """A 4-camera rig's detections of 30 frames x 17 joints: 3 px noise, 15 % of them off by
    ~120 px (so the outlier pass drops views), confidences 0.2-1, some cameras masked."""
    rng = np.random.default_rng(11)
    cams = default_rig(4)
    X = rng.uniform([-0.5, -0.5, 0.05], [0.5, 0.5, 1.9], (30, 17, 3))
    uv = np.stack([c.project(X) for c in cams], axis=1)
    uv += rng.normal(0, 3.0, uv.shape)
    bad = rng.random(uv.shape[:3]) < 0.15
    uv[bad] += rng.normal(0, 120.0, (int(bad.sum()), 2))
    det = np.concatenate([uv, rng.uniform(0.2, 1.0, (*uv.shape[:3], 1))], axis=-1)
    mask = rng.random(det.shape[:2]) > 0.1
    return cams, det, mask


def test_dlt_systems_give_eighs_vectors(noisy) -> None:
    cams, det, _ = noisy
    P = projection_matrices(cams)
    uv = det[..., :2].transpose(0, 2, 1, 3).reshape(-1, len(cams), 2)
    w = det[..., 2].transpose(0, 2, 1).reshape(-1, len(cams))
    # all views, and every one-view-left-out subset
    subsets = [np.ones(len(cams), bool)] + [np.arange(len(cams)) != c for c in range(len(cams))]
    G = []
    for keep in subsets:
        ww = np.concatenate([w * keep, w * keep], axis=1)[..., None]
        A = _unit_rows(P, uv) * ww
        G.append(A.transpose(0, 2, 1) @ A)
    G = np.concatenate(G)
    v = _smallest_eigenvectors(G)
    _same_direction(v, _eigh_smallest(G), 1e-11)
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-14)


def test_close_eigenvalues_and_singular_batches_fall_back_to_eigh() -> None:
    rng = np.random.default_rng(4)
    Q = Rotation.random(6, random_state=5).as_matrix()
    Q4 = np.zeros((6, 4, 4))
    Q4[:, :3, :3], Q4[:, 3, 3] = Q, 1.0
    lam = np.array([[1e-3, 2e-3, 1.0, 2.0]] * 3 + [[1e-3, 1.0001e-3, 1.0, 2.0]] * 3)
    G = np.einsum("mij,mj,mkj->mik", Q4, lam, Q4)
    G = np.concatenate([G, np.einsum("mki,mkj->mij", *[rng.normal(size=(20, 8, 4))] * 2)])
    v = _smallest_eigenvectors(G)
    # λ₁/λ₂ = 0.5: converged after (G⁻¹)^16 only to ~1e-5, so these rows are eigh's own
    np.testing.assert_array_equal(v[:6], _eigh_smallest(G[:6]))
    _same_direction(v[6:], _eigh_smallest(G[6:]), 1e-11)
    # a singular matrix in the batch (no inverse): the whole batch is eigh's
    G[3] = 0.0
    np.testing.assert_array_equal(_smallest_eigenvectors(G), _eigh_smallest(G))


def test_triangulation_equals_the_eigh_dlt(noisy, monkeypatch: pytest.MonkeyPatch) -> None:
    cams, det, mask = noisy
    fast = triangulate_keypoints(cams, det, mask, outlier_px=10.0)
    monkeypatch.setattr(triangulation, "_smallest_eigenvectors", _eigh_smallest)
    ref = triangulate_keypoints(cams, det, mask, outlier_px=10.0)
    assert (ref.n_views == 3).sum() > 50 and (ref.n_views == 2).sum() > 5  # views dropped
    np.testing.assert_array_equal(fast.n_views, ref.n_views)
    np.testing.assert_array_equal(np.isnan(fast.points), np.isnan(ref.points))
    np.testing.assert_allclose(fast.points, ref.points, rtol=0, atol=1e-9)
    np.testing.assert_allclose(fast.error_px, ref.error_px, rtol=0, atol=1e-6)
