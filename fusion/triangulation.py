"""Multi-view triangulation of 2-D keypoints: confidence-weighted DLT, batched.

Cameras follow fusion/camera.py (OpenCV model: X_c = R X_w + t, pixel = K · distort(X_c/Z_c)).
Pixels are first undistorted with `cv2.undistortPoints` (where a camera has distortion), then
every joint of every frame is solved at once by the direct linear transform: each view adds the
two rows w·(u·P₃ − P₁) and w·(v·P₃ − P₂), each row scaled to unit norm before the weight w (the
detector's confidence) so a view counts by its confidence, not by its distance; the point is
the right singular vector of the stacked (2C × 4) systems, i.e. the eigenvector of AᵀA with
the smallest eigenvalue (`_smallest_eigenvectors`: batched inverse iteration, eigh where it
does not converge).
`cv2.triangulatePoints` takes exactly two views, so it does not help here.

Optional robustness: when a point's worst view is off by more than `outlier_px` and it has ≥ 3
views, each view is left out in turn and the subset that fits best is kept (a detector's
occasional swap or mis-detection), repeated while that holds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Triangulation:
    """Result for N frames × J joints."""

    points: np.ndarray  # (N, J, 3) world, NaN where fewer than two views
    error_px: np.ndarray  # (N, J) RMS reprojection error over the views used, px
    n_views: np.ndarray  # (N, J) views used


def projection_matrices(cameras: Sequence[Any]) -> np.ndarray:
    """K [R | t] of each camera, (C, 3, 4)."""
    return np.stack([c.K @ np.hstack([c.R, np.reshape(c.t, (3, 1))]) for c in cameras])


def undistort_pixels(cameras: Sequence[Any], uv: np.ndarray) -> np.ndarray:
    """Pixels (..., C, J, 2) → the pixels an ideal (distortion-free) camera would see, per
    camera (cv2.undistortPoints with P = K); cameras without distortion are unchanged."""
    import cv2

    out = np.array(uv, float, copy=True)
    for c, cam in enumerate(cameras):
        dist = getattr(cam, "dist", None)
        if dist is None or not np.any(dist):
            continue
        pts = out[..., c, :, :]
        flat = pts.reshape(-1, 2)
        ok = np.isfinite(flat).all(axis=1)
        if ok.any():
            und = cv2.undistortPoints(
                flat[ok].reshape(-1, 1, 2).astype(np.float64), cam.K, np.asarray(dist), P=cam.K
            )
            flat[ok] = und.reshape(-1, 2)
        out[..., c, :, :] = flat.reshape(pts.shape)
    return out


def _unit_rows(P: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """The DLT rows u·P₃ − P₁ and v·P₃ − P₂ of every view, each scaled to unit norm (zero
    rows stay zero): (M, C, 2) pixels → (M, 2C, 4). They do not depend on which views are
    used, so `triangulate` makes them once for every subset it tries."""
    r1 = uv[..., 0, None] * P[None, :, 2, :] - P[None, :, 0, :]  # (M, C, 4)
    r2 = uv[..., 1, None] * P[None, :, 2, :] - P[None, :, 1, :]
    A = np.concatenate([r1, r2], axis=1)  # (M, 2C, 4)
    n = np.linalg.norm(A, axis=-1, keepdims=True)
    return np.where(n > 0, A / np.where(n > 0, n, 1.0), 0.0)


def _solve(
    P: np.ndarray, uv: np.ndarray, w: np.ndarray, rows: np.ndarray | None = None
) -> np.ndarray:
    """DLT for M points: P (C, 3, 4), uv (M, C, 2), w (M, C) → homogeneous X (M, 4);
    `rows` = `_unit_rows(P, uv)` when the caller has them."""
    ww = np.concatenate([w, w], axis=1)[..., None]
    A = (_unit_rows(P, uv) if rows is None else rows) * ww
    # the right singular vector of the smallest singular value = the eigenvector of AᵀA with
    # the smallest eigenvalue; the rows are normalised, so squaring the condition number
    # costs ~1e-8 m
    return _smallest_eigenvectors(A.transpose(0, 2, 1) @ A)


def _smallest_eigenvectors(G: np.ndarray, squarings: int = 4, tol: float = 1e-10) -> np.ndarray:
    """Unit eigenvectors (M, 4) of the smallest eigenvalue of symmetric PSD G (M, 4, 4).

    Inverse iteration with a repeated square of the inverse: (G⁻¹)^16 maps a start onto
    that eigenvector up to (λ₁/λ₂)^16 (λ₁/λ₂ < 0.11 for 99 % of the DLT systems of a noisy
    4-camera rig, so ≤ 1e-15). A row whose vector still moves by more than `tol` under one
    more (G⁻¹)^16, or a batch with a singular G, gets `np.linalg.eigh` (the answer it gives
    otherwise, to ~1e-13). Why: eigh costs ~4.5 µs per 4x4 matrix, one inverse ~1 µs, and the
    live estimator solves some hundreds of these per tick; each row is computed on its own,
    so a point's result does not depend on which others share the call."""
    try:
        Pm = np.linalg.inv(G)
    except np.linalg.LinAlgError:
        return np.linalg.eigh(G)[1][..., 0]
    # scaled to trace 1 the largest eigenvalue is in [1/4, 1]: its 16th power neither
    # overflows nor underflows (the others may underflow: they are meant to vanish)
    Pm *= (1.0 / np.einsum("mii->m", Pm))[:, None, None]
    for _ in range(squarings):
        Pm = Pm @ Pm
    # start from the column with the largest diagonal entry: ≈ c·v₁v₁ⱼ with |v₁ⱼ| ≥ 1/2 when
    # the power has converged (e₄, the usual start, is orthogonal to v₁ for a point at infinity)
    v = Pm[np.arange(len(Pm)), :, np.einsum("mii->mi", Pm).argmax(axis=1)]
    vw = np.stack([v, np.einsum("mij,mj->mi", Pm, v)])  # the start and one more (G⁻¹)^16
    with np.errstate(invalid="ignore", divide="ignore"):
        v, w = vw / np.sqrt(np.einsum("kmi,kmi->km", vw, vw))[..., None]
    moved = np.abs(w - v * np.sign(np.einsum("mi,mi->m", v, w))[:, None]).max(axis=1)
    bad = ~(moved < tol)  # NaN (inf in the inverse) included
    if bad.any():
        w[bad] = np.linalg.eigh(G[bad])[1][..., 0]
    return w


def _reproject(P: np.ndarray, X: np.ndarray) -> np.ndarray:
    """World points (M, 3) → pixels (M, C, 2) in every camera (ideal cameras)."""
    Xh = np.concatenate([X, np.ones((len(X), 1))], axis=1)
    x = np.einsum("cij,mj->mci", P, Xh)
    with np.errstate(divide="ignore", invalid="ignore"):
        return x[..., :2] / x[..., 2:3]


def _view_errors(P: np.ndarray, X: np.ndarray, uv: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Reprojection error (M, C) px of each used view (NaN for unused ones)."""
    e = np.linalg.norm(_reproject(P, X) - uv, axis=-1)
    return np.where(used, e, np.nan)


def _solve_and_score(
    P: np.ndarray,
    uv: np.ndarray,
    w: np.ndarray,
    used: np.ndarray,
    rows: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """DLT over the used views → (points (M, 3), RMS reprojection error (M,) px, each used
    view's error (M, C) px, NaN for the others); `rows` as for `_solve`."""
    Xh = _solve(P, uv, np.where(used, w, 0.0), rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        X = Xh[:, :3] / Xh[:, 3:4]
        e = _view_errors(P, X, uv, used)
        # nanmean's arithmetic (NaN → 0, sum, / count) without its overhead
        e2 = e * e
        seen = ~np.isnan(e2)
        rms = np.sqrt(np.sum(np.where(seen, e2, 0.0), axis=1) / np.sum(seen, axis=1))
    return X, np.where(np.isfinite(rms), rms, np.inf), e


def triangulate(
    P: np.ndarray,
    uv: np.ndarray,
    weights: np.ndarray,
    outlier_px: float | None = None,
) -> Triangulation:
    """Triangulate (N, C, J, 2) ideal pixels with (N, C, J) weights (0 = view not used).

    P: (C, 3, 4) projection matrices. Points with fewer than two views (or a degenerate
    solution: at infinity, or behind a camera that sees them) are NaN.
    """
    uv = np.asarray(uv, float)
    w = np.asarray(weights, float)
    N, C, J, _ = uv.shape
    if P.shape != (C, 3, 4):
        raise ValueError(f"triangulate: {P.shape[0]} projection matrices for {C} views")
    w = np.where(np.isfinite(uv).all(axis=-1) & np.isfinite(w) & (w > 0), w, 0.0)
    uvm = np.where(w[..., None] > 0, uv, 0.0).transpose(0, 2, 1, 3).reshape(N * J, C, 2)
    wm = w.transpose(0, 2, 1).reshape(N * J, C)
    used = wm > 0
    X = np.full((N * J, 3), np.nan)
    err = np.full(N * J, np.nan)
    E = np.full((N * J, C), np.nan)  # each used view's reprojection error of X
    todo = np.flatnonzero(used.sum(axis=1) >= 2)
    rows = _unit_rows(P, uvm)  # whatever subset of views is used
    if len(todo):
        X[todo], err[todo], E[todo] = _solve_and_score(
            P, uvm[todo], wm[todo], used[todo], rows[todo]
        )
    while outlier_px is not None and len(todo):
        # points whose worst view is off by more than outlier_px and that have a view to
        # spare: try leaving out each view, keep the subset that fits best
        e = E[todo]
        n_used = used[todo].sum(axis=1)
        todo = todo[
            (n_used >= 3) & (np.nanmax(np.where(np.isfinite(e), e, -1.0), axis=1) > outlier_px)
        ]
        if not len(todo):
            break
        # every (point, view left out) trial in one solve: the points are independent, so
        # this is the same arithmetic as one solve per view, at the cost of one call
        cur = used[todo]
        pt, cam = np.nonzero(cur)  # trial k: point todo[pt[k]] without view cam[k]
        trial = cur[pt]
        trial[np.arange(len(pt)), cam] = False
        tp = todo[pt]
        Xt, et, Et = _solve_and_score(P, uvm[tp], wm[tp], trial, rows[tp])
        # each point's best trial: the lowest error, the earliest view left out among equals
        # (argmin's first occurrence; the same choice as trying the views in order and taking
        # a later one only when strictly better); none when every trial failed (error inf)
        grid = np.full((len(todo), C), np.inf)
        grid[pt, cam] = et
        which = np.zeros((len(todo), C), np.intp)
        which[pt, cam] = np.arange(len(pt))
        pick = grid.argmin(axis=1)
        win = np.flatnonzero(grid[np.arange(len(todo)), pick] < np.inf)
        k = which[win, pick[win]]
        err[todo] = np.inf  # a point that no subset fits keeps its point, not its error
        todo = todo[win]  # a winning subset always drops a view: these changed, the rest is final
        X[todo], err[todo], used[todo], E[todo] = Xt[k], et[k], trial[k], Et[k]
    # in front of every camera that uses it
    depth = np.einsum("ci,mi->mc", P[:, 2, :3], np.nan_to_num(X)) + P[None, :, 2, 3]
    behind = ((depth <= 0) & used).any(axis=1)
    X[behind | ~np.isfinite(X).all(axis=1)] = np.nan
    err[~np.isfinite(X).all(axis=1) | ~np.isfinite(err)] = np.nan
    return Triangulation(
        points=X.reshape(N, J, 3),
        error_px=err.reshape(N, J),
        n_views=used.sum(axis=1).reshape(N, J),
    )


def triangulate_keypoints(
    cameras: Sequence[Any],
    keypoints: np.ndarray,
    camera_mask: np.ndarray | None = None,
    min_confidence: float = 0.1,
    outlier_px: float | None = 25.0,
    P: np.ndarray | None = None,
) -> Triangulation:
    """2-D detections (N, C, J, 3) [x, y, confidence] from calibrated cameras → 3-D points.

    A view is used when its camera is not masked (camera_mask (N, C)), the confidence is at
    least `min_confidence` and the pixel is finite; confidences are the DLT weights.
    """
    kp = np.asarray(keypoints, float)
    if kp.ndim != 4 or kp.shape[-1] != 3:
        raise ValueError(f"triangulate_keypoints: keypoints {kp.shape}, expected (N, C, J, 3)")
    if kp.shape[1] != len(cameras):
        raise ValueError(
            f"triangulate_keypoints: {kp.shape[1]} keypoint views for {len(cameras)} cameras"
        )
    conf = kp[..., 2]
    w = np.where(np.isfinite(conf) & (conf >= min_confidence), conf, 0.0)
    if camera_mask is not None:
        w = w * np.asarray(camera_mask, bool)[..., None]
    uv = undistort_pixels(cameras, kp[..., :2])
    return triangulate(projection_matrices(cameras) if P is None else P, uv, w, outlier_px)
