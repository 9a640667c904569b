"""Orientation filters for many IMUs at once: Madgwick and Mahony, vectorised over sensors.

Why not call `ahrs` directly: its filters are pure Python, one sample of one sensor per call
(measured ≈ 100 µs/sample for Madgwick, ≈ 130 µs for Mahony, ≈ 350 µs for its EKF). Thirteen
sensors at 60–100 Hz then cost 8–13 % of a core per subject and 1.3 ms per tick in series, so a
handful of subjects saturates the two cores the runtime has. `OrientationFilter` runs the
*same* update equations as `ahrs.filters.Madgwick.updateIMU/updateMARG` and
`ahrs.filters.Mahony.updateIMU` on arrays of any leading shape (subjects × sensors), so one
NumPy step updates every sensor of every subject (≈ 30–60 µs per step whatever the count).
`tests/test_orientation.py` checks sample-for-sample agreement with `ahrs` on real data.

Conventions (those of `ahrs`): quaternions are scalar-first (w, x, y, z), unit, and rotate
sensor-frame vectors into the earth frame (q ⊗ v ⊗ q*). The earth frame has z up (a sensor at
rest measures +g along earth z); in 6-D use (gyro + accelerometer) its heading is arbitrary —
the one the filter was started with — and drifts with gyro bias; with a magnetometer (9-D,
Madgwick only) earth x points to magnetic north (north-west-up).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fusion.skeleton import GRAVITY

ALGORITHMS: tuple[str, ...] = ("madgwick", "mahony")


# -- quaternion helpers (scalar-first, batched over leading axes) -------------------------------
def quat_multiply(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Hamilton product p ⊗ q, shapes (..., 4) broadcast."""
    pw, px, py, pz = np.moveaxis(np.asarray(p, float), -1, 0)
    qw, qx, qy, qz = np.moveaxis(np.asarray(q, float), -1, 0)
    return np.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        axis=-1,
    )


def quat_conjugate(q: np.ndarray) -> np.ndarray:
    out = np.array(q, float, copy=True)
    out[..., 1:] *= -1.0
    return out


def quat_to_matrix(q: np.ndarray) -> np.ndarray:
    """Unit quaternions (..., 4) → rotation matrices (..., 3, 3) (sensor → earth)."""
    q = np.asarray(q, float)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    w, x, y, z = np.moveaxis(q, -1, 0)
    R = np.empty((*q.shape[:-1], 3, 3))
    R[..., 0, 0] = 1.0 - 2.0 * (y * y + z * z)
    R[..., 0, 1] = 2.0 * (x * y - w * z)
    R[..., 0, 2] = 2.0 * (x * z + w * y)
    R[..., 1, 0] = 2.0 * (x * y + w * z)
    R[..., 1, 1] = 1.0 - 2.0 * (x * x + z * z)
    R[..., 1, 2] = 2.0 * (y * z - w * x)
    R[..., 2, 0] = 2.0 * (x * z - w * y)
    R[..., 2, 1] = 2.0 * (w * x + y * z)
    R[..., 2, 2] = 1.0 - 2.0 * (x * x + y * y)
    return R


def matrix_to_quat(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) → unit quaternions (..., 4), w ≥ 0."""
    from scipy.spatial.transform import Rotation

    R = np.asarray(R, float)
    xyzw = Rotation.from_matrix(R.reshape(-1, 3, 3)).as_quat()
    q = np.concatenate([xyzw[:, 3:], xyzw[:, :3]], axis=1)
    q *= np.where(q[:, :1] < 0, -1.0, 1.0)
    return q.reshape(*R.shape[:-2], 4)


def rotvec_to_matrix(v: np.ndarray) -> np.ndarray:
    """Rotation vectors (..., 3) (axis × angle, rad) → rotation matrices (..., 3, 3).

    Rodrigues' formula in plain NumPy, R = cos θ I + sinc θ [v]× + (1 − cos θ)/θ² v vᵀ:
    scipy's Rotation costs ~100 µs a call in checks, and the gyro refinement calls this on
    every tick."""
    v = np.asarray(v, float)
    th = np.sqrt(np.einsum("...i,...i->...", v, v))
    big = th > 1e-6  # below: the series' first terms, exact in float64
    a = np.divide(np.sin(th), th, out=np.ones_like(th), where=big)  # sin θ / θ
    b = np.divide(1.0 - np.cos(th), th * th, out=np.full_like(th, 0.5), where=big)
    x, y, z = (a * v[..., i] for i in range(3))
    R = (b[..., None, None] * v[..., :, None]) * v[..., None, :]
    R += np.cos(th)[..., None, None] * np.eye(3)
    R[..., 0, 1] -= z
    R[..., 0, 2] += y
    R[..., 1, 0] += z
    R[..., 1, 2] -= x
    R[..., 2, 0] -= y
    R[..., 2, 1] += x
    return R


def matrix_to_rotvec(R: np.ndarray) -> np.ndarray:
    """Rotation matrices (..., 3, 3) → rotation vectors (..., 3), angle in [0, π].

    Plain NumPy from the trace and the skew part; the few rotations within ~9° of π, where
    that loses precision, go through scipy's quaternion path."""
    R = np.asarray(R, float)
    c = np.clip((R[..., 0, 0] + R[..., 1, 1] + R[..., 2, 2] - 1.0) * 0.5, -1.0, 1.0)
    th = np.arccos(c)
    w = np.stack(
        [R[..., 2, 1] - R[..., 1, 2], R[..., 0, 2] - R[..., 2, 0], R[..., 1, 0] - R[..., 0, 1]],
        -1,
    )
    small = th < 1e-4
    f = np.where(small, 0.5 + th * th / 12.0, th / (2.0 * np.sin(np.where(small, 1.0, th))))
    out = w * f[..., None]
    near_pi = th > np.pi - 0.15
    if near_pi.any():
        from scipy.spatial.transform import Rotation

        out[near_pi] = Rotation.from_matrix(R[near_pi]).as_rotvec()
    return out


def best_rotation(H: np.ndarray) -> np.ndarray:
    """The rotation R (..., 3, 3) minimising Σ |R b − a|² given H = Σ a bᵀ (..., 3, 3): the
    core of Kabsch's method, batched (a reflection is never returned)."""
    U, _, Vt = np.linalg.svd(np.asarray(H, float))
    d = np.sign(np.linalg.det(U @ Vt))
    U = U.copy()
    U[..., :, 2] *= d[..., None]
    return U @ Vt


def yaw_quat(angle: np.ndarray) -> np.ndarray:
    """Rotations about earth z by `angle` (rad) as quaternions (..., 4)."""
    a = np.asarray(angle, float) / 2.0
    out = np.zeros((*a.shape, 4))
    out[..., 0], out[..., 3] = np.cos(a), np.sin(a)
    return out


def quat_from_acc(acc: np.ndarray) -> np.ndarray:
    """Orientation with zero heading whose earth z matches the measured specific force.

    Same roll/pitch construction as `ahrs.common.orientation.acc2q` (vectorised); a zero
    vector gives the identity.
    """
    a = np.asarray(acc, float)
    n = np.linalg.norm(a, axis=-1, keepdims=True)
    ok = n[..., 0] > 0
    a = np.where(n > 0, a / np.where(n > 0, n, 1.0), 0.0)
    ax, ay, az = np.moveaxis(a, -1, 0)
    ex = np.arctan2(ay, az)
    ey = np.arctan2(-ax, np.sqrt(ay * ay + az * az))
    cx, sx = np.cos(ex / 2), np.sin(ex / 2)
    cy, sy = np.cos(ey / 2), np.sin(ey / 2)
    q = np.stack([cx * cy, sx * cy, cx * sy, -sx * sy], axis=-1)
    q /= np.linalg.norm(q, axis=-1, keepdims=True)
    q[~ok] = (1.0, 0.0, 0.0, 0.0)
    return q


def quat_from_acc_mag(acc: np.ndarray, mag: np.ndarray) -> np.ndarray:
    """Orientation in north-west-up from one accelerometer + magnetometer sample (batched)."""
    z = np.asarray(acc, float)
    z = z / np.linalg.norm(z, axis=-1, keepdims=True)
    m = np.asarray(mag, float)
    x = m - np.sum(m * z, axis=-1, keepdims=True) * z  # horizontal field: magnetic north
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    y = np.cross(z, x)
    return matrix_to_quat(np.stack([x, y, z], axis=-2))  # rows: earth axes in sensor axes


def heading_of(q: np.ndarray) -> np.ndarray:
    """Heading (rad) of each orientation: the yaw of the sensor x axis in the earth frame."""
    R = quat_to_matrix(q)
    return np.arctan2(R[..., 1, 0], R[..., 0, 0])


# -- the filter ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FilterConfig:
    """Parameters; defaults are `ahrs`'s except Madgwick's gain (see `DEFAULT_GAIN`)."""

    algorithm: str = "madgwick"
    gain: float = 0.1  # Madgwick β, rad/s
    k_p: float = 1.0  # Mahony proportional gain
    k_i: float = 0.3  # Mahony integral (gyro-bias) gain
    #: "ahrs": q += ½ q⊗ω·dt with the newest gyro sample (first order; identical to ahrs).
    #: "exact": rotate by the mean of the previous and newest gyro samples with the quaternion
    #: exponential (second order): at 60 Hz the first-order step loses ~θ³/12 per sample in
    #: a fast swing (θ = ω·dt ≈ 0.13 rad for a shank at 8 rad/s), ≈ 0.7°/s of tilt drift.
    integration: str = "ahrs"
    #: skip the accelerometer correction of a sample whose specific force differs from g by
    #: more than this (m/s²): impacts and swing accelerations are not gravity. inf = never
    #: (as ahrs).
    acc_gate: float = float("inf")
    #: "unit": the correction uses the direction of the specific force (as ahrs);
    #: "gravity": it uses f / g, so with Mahony the correction is linear in f and the tilt
    #: settles on the *mean* specific force (gravity, whatever the accelerations do), not on a
    #: mean of directions, which strong, lopsided accelerations pull off vertical.
    acc_scale: str = "unit"

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"filter algorithm {self.algorithm!r}: must be one of {ALGORITHMS}")
        if self.integration not in ("ahrs", "exact"):
            raise ValueError(f"filter integration {self.integration!r}: 'ahrs' or 'exact'")
        if self.acc_scale not in ("unit", "gravity"):
            raise ValueError(f"filter acc_scale {self.acc_scale!r}: 'unit' or 'gravity'")
        if not self.acc_gate > 0:
            raise ValueError(f"filter acc_gate={self.acc_gate!r}: must be > 0 m/s² (inf: off)")
        for name in ("gain", "k_p", "k_i"):
            v = getattr(self, name)
            if not np.isfinite(v) or v < 0:
                raise ValueError(f"filter {name}={v!r}: must be a finite number >= 0")


class OrientationFilter:
    """Madgwick (6-D/9-D) or Mahony (6-D) for an array of sensors, stepped together.

    `shape` is the leading shape of the sensor array, e.g. (13,) or (subjects, 13). State: `q`
    (shape + (4,)), Mahony's gyro-bias estimate `bias` (shape + (3,)) and `initialized`
    (shape). A sensor is started from its first valid accelerometer sample (`quat_from_acc`,
    heading 0) unless `initialize` is called; samples that are masked out or not finite leave
    that sensor's state untouched.
    """

    def __init__(self, shape: Sequence[int] | int, config: FilterConfig | None = None) -> None:
        self.shape = (shape,) if isinstance(shape, int) else tuple(shape)
        self.config = config or FilterConfig()
        self._n = int(np.prod(self.shape, dtype=int))
        self._q = np.zeros((self._n, 4))
        self._q[:, 0] = 1.0
        self._bias = np.zeros((self._n, 3))
        self._init = np.zeros(self._n, bool)
        self._prev_gyr = np.full((self._n, 3), np.nan)  # for "exact" integration
        base = self.config.gain if self.config.algorithm == "madgwick" else self.config.k_p
        #: per-sensor gain (Madgwick β or Mahony k_P), shape; callers may raise it for a while
        self.gain = np.full(self.shape, float(base))

    # state views in the caller's shape
    @property
    def q(self) -> np.ndarray:
        return self._q.reshape(*self.shape, 4)

    def last_gyro(self) -> np.ndarray:
        """The gyro reading each sensor's last update integrated (NaN before one, and always
        NaN unless integration is "exact", which keeps it for the trapezoid)."""
        return self._prev_gyr.reshape(*self.shape, 3)

    @property
    def bias(self) -> np.ndarray:
        return self._bias.reshape(*self.shape, 3)

    @property
    def initialized(self) -> np.ndarray:
        return self._init.reshape(self.shape)

    def _select(self, where: np.ndarray | None) -> np.ndarray:
        if where is None:
            return np.ones(self._n, bool)
        return np.broadcast_to(np.asarray(where, bool), self.shape).reshape(-1)

    def reset(self, where: np.ndarray | None = None) -> None:
        """Forget the state of the sensors selected by the boolean `where` (all if None)."""
        sel = self._select(where)
        self._q[sel] = (1.0, 0.0, 0.0, 0.0)
        self._bias[sel] = 0.0
        self._init[sel] = False
        self._prev_gyr[sel] = np.nan

    def initialize(self, q: np.ndarray, where: np.ndarray | None = None) -> None:
        """Set the orientation of the selected sensors (and mark them started)."""
        sel = self._select(where)
        qq = np.broadcast_to(np.asarray(q, float), (*self.shape, 4)).reshape(-1, 4)[sel]
        self._q[sel] = qq / np.linalg.norm(qq, axis=-1, keepdims=True)
        self._init[sel] = True
        self._prev_gyr[sel] = np.nan

    def step(
        self,
        gyr: np.ndarray,
        acc: np.ndarray,
        dt: float | np.ndarray,
        mask: np.ndarray | None = None,
        mag: np.ndarray | None = None,
    ) -> np.ndarray:
        """One sample for every sensor: gyr rad/s, acc m/s² (any unit works), shape + (3,).

        `dt` (s) is a scalar or broadcasts to `shape`; `mag` (optional, Madgwick) switches to
        the 9-D update where its norm is non-zero. Returns the updated `q` (shape + (4,)).
        """
        n = self._n
        g = np.asarray(gyr, float).reshape(n, 3)
        a = np.asarray(acc, float).reshape(n, 3)
        valid = np.isfinite(g).all(axis=1) & np.isfinite(a).all(axis=1)
        if mask is not None:
            valid &= np.broadcast_to(np.asarray(mask, bool), self.shape).reshape(n)
        m = None
        if mag is not None:
            m = np.asarray(mag, float).reshape(n, 3)
            valid &= np.isfinite(m).all(axis=1)
        start = valid & ~self._init
        if start.any():
            q0 = quat_from_acc(a[start])
            if m is not None and self.config.algorithm == "madgwick":
                has_mag = np.linalg.norm(m[start], axis=1) > 0
                if has_mag.any():
                    q0[has_mag] = quat_from_acc_mag(a[start][has_mag], m[start][has_mag])
            self._q[start] = q0
            self._init[start] = True
            valid &= ~start  # as ahrs: the first sample sets q, updates start at the next
        exact = self.config.integration == "exact"
        if exact:
            # over a gap (dt spanning missed samples) this is the trapezoid between the last
            # reading before it and the first after it
            prev = np.where(start[:, None], np.nan, self._prev_gyr)
            self._prev_gyr = np.where(valid[:, None], g, self._prev_gyr)
            g = np.where(np.isfinite(prev), 0.5 * (prev + g), g)
        # ahrs returns the state unchanged when the gyro reads exactly zero
        moved = valid & (g != 0.0).any(axis=1)
        if not moved.any():
            return self.q
        all_moved = bool(moved.all())
        if not all_moved:
            g, a = g[moved], a[moved]
            m = None if m is None else m[moved]
        if np.isfinite(self.config.acc_gate):  # a zero vector means "no correction"
            off = np.abs(np.sqrt(np.einsum("ij,ij->i", a, a)) - GRAVITY) > self.config.acc_gate
            a = np.where(off[:, None], 0.0, a)
        dt_arr = np.broadcast_to(np.asarray(dt, float), self.shape).reshape(n)
        gain = self.gain.reshape(n)
        if not all_moved:
            dt_arr, gain = dt_arr[moved], gain[moved]
        q = self._q if all_moved else self._q[moved]
        if self.config.algorithm == "madgwick":
            if m is not None and (m != 0.0).any():
                q_new = _madgwick_step(q, g, a, dt_arr, gain, m)
            else:
                q_new = _madgwick_imu_step(q, g, a, dt_arr, gain, exact)
        else:
            b = self._bias if all_moved else self._bias[moved]
            linear = self.config.acc_scale == "gravity"
            q_new, b_new = _mahony_step(q, b, g, a, dt_arr, gain, self.config.k_i, exact, linear)
            if all_moved:
                self._bias = b_new
            else:
                self._bias[moved] = b_new
        if all_moved:
            self._q = q_new
        else:
            self._q[moved] = q_new
        return self.q

    def run(
        self,
        gyr: np.ndarray,
        acc: np.ndarray,
        dt: float | np.ndarray,
        mask: np.ndarray | None = None,
        mag: np.ndarray | None = None,
    ) -> np.ndarray:
        """Filter T samples (T, *shape, 3) → quaternions (T, *shape, 4); `dt` scalar or (T,)."""
        T = len(gyr)
        dts = np.broadcast_to(np.asarray(dt, float), (T,))
        out = np.empty((T, *self.shape, 4))
        for k in range(T):
            out[k] = self.step(
                gyr[k],
                acc[k],
                dts[k],
                None if mask is None else mask[k],
                None if mag is None else mag[k],
            )
        return out


# Structure constants that turn the per-sensor products into one matmul each (all (M, ·)).
# (q ⊗ (0, u))_i = Σ_jk _QV[j, k, i] q_j u_k
_QV = np.zeros((4, 3, 4))
_QV[1, 0, 0] = _QV[2, 1, 0] = _QV[3, 2, 0] = -1.0
_QV[0, 0, 1], _QV[2, 2, 1], _QV[3, 1, 1] = 1.0, 1.0, -1.0
_QV[0, 1, 2], _QV[1, 2, 2], _QV[3, 0, 2] = 1.0, -1.0, 1.0
_QV[0, 2, 3], _QV[1, 1, 3], _QV[2, 0, 3] = 1.0, 1.0, -1.0
_QV = _QV.reshape(12, 4)
# gravity direction in the sensor frame (third row of R(q)) as quadratic forms of q
_GQ = np.zeros((4, 4, 3))
_GQ[1, 3, 0] = _GQ[3, 1, 0] = 1.0
_GQ[0, 2, 0] = _GQ[2, 0, 0] = -1.0
_GQ[0, 1, 1] = _GQ[1, 0, 1] = _GQ[2, 3, 1] = _GQ[3, 2, 1] = 1.0
_GQ[0, 0, 2], _GQ[1, 1, 2], _GQ[2, 2, 2], _GQ[3, 3, 2] = 1.0, -1.0, -1.0, 1.0
_GQ = _GQ.reshape(16, 3)
# cross product (v × a)_k = Σ_ij _CROSS[i, j, k] v_i a_j
_CROSS = np.zeros((3, 3, 3))
for _i, _j, _k in ((0, 1, 2), (1, 2, 0), (2, 0, 1)):
    _CROSS[_i, _j, _k], _CROSS[_j, _i, _k] = 1.0, -1.0
_CROSS = _CROSS.reshape(9, 3)


def _rows_dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


def _gravity_and_error(q: np.ndarray, acc: np.ndarray, linear: bool = False) -> tuple:
    """Measured gravity a (unit, or f/g if `linear`), predicted v (sensor frame), e = v × a;
    rows without acc → 0."""
    M = len(q)
    a_norm = np.sqrt(_rows_dot(acc, acc))
    has_acc = a_norm > 0
    scale = 1.0 / GRAVITY if linear else 1.0 / np.where(has_acc, a_norm, 1.0)
    a = acc * np.broadcast_to(scale, a_norm.shape)[:, None]
    v = (q[:, :, None] * q[:, None, :]).reshape(M, 16) @ _GQ
    e = (v[:, :, None] * a[:, None, :]).reshape(M, 9) @ _CROSS
    return a, v, e, has_acc


def _rotation_half(omega: np.ndarray, dt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """cos(θ/2) and sin(θ/2)·ω̂ of the rotation ω·dt (rows), safe at ω = 0."""
    n = np.sqrt(_rows_dot(omega, omega))
    half = 0.5 * n * dt
    return np.cos(half), (0.5 * dt * np.sinc(half / np.pi))[:, None] * omega


def _madgwick_imu_step(
    q: np.ndarray,
    gyr: np.ndarray,
    acc: np.ndarray,
    dt: np.ndarray,
    gain: np.ndarray,
    exact: bool = False,
) -> np.ndarray:
    """ahrs.filters.Madgwick.updateIMU for M sensors at once (q (M, 4) unit).

    Madgwick's gradient Jᵀf of the gravity objective equals q ⊗ (0, 2 v×a) + r q with
    r = 2(1 − a·v − v_z + a_z) (its tangential part is the Mahony error, the radial part comes
    from f's non-homogeneous terms), so the whole update is a few matmuls; it agrees with the
    component formula of ahrs to rounding (1e-16 per step).
    """
    M = len(q)
    a, v, e, has_acc = _gravity_and_error(q, acc)
    r = 2.0 * (1.0 - _rows_dot(a, v) - v[:, 2] + a[:, 2])
    g_norm = np.sqrt(4.0 * _rows_dot(e, e) + r * r)
    k = np.where(has_acc & (g_norm > 0), gain / np.where(g_norm > 0, g_norm, 1.0), 0.0)
    if exact:  # q ⊗ exp(ω dt / 2) − dt·β·∇̂
        c, sv = _rotation_half(gyr, dt)
        u = sv - (2.0 * dt * k)[:, None] * e
        qn = q * (c - dt * k * r)[:, None] + (q[:, :, None] * u[:, None, :]).reshape(M, 12) @ _QV
    else:  # q + dt (½ q ⊗ ω − β ∇̂)
        u = 0.5 * gyr - (2.0 * k)[:, None] * e
        qn = q * (1.0 - dt * k * r)[:, None] + dt[:, None] * (
            (q[:, :, None] * u[:, None, :]).reshape(M, 12) @ _QV
        )
    return qn * (1.0 / np.sqrt(_rows_dot(qn, qn)))[:, None]


def _normalise(v: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    n = np.sqrt(sum(c * c for c in v))
    n = np.where(n > 0, n, 1.0)
    return tuple(c / n for c in v)


def _madgwick_step(
    q: np.ndarray,
    gyr: np.ndarray,
    acc: np.ndarray,
    dt: np.ndarray,
    gain: np.ndarray,
    mag: np.ndarray | None,
) -> np.ndarray:
    """ahrs.filters.Madgwick.updateMARG (9-D) component-wise over arrays; rows whose
    magnetometer reads zero fall back to updateIMU, as in ahrs."""
    qw, qx, qy, qz = _normalise(tuple(np.moveaxis(q, -1, 0)))
    gx, gy, gz = np.moveaxis(gyr, -1, 0)
    # qDot = 0.5 q ⊗ (0, ω)
    dw = 0.5 * (-qx * gx - qy * gy - qz * gz)
    dx = 0.5 * (qw * gx + qy * gz - qz * gy)
    dy = 0.5 * (qw * gy - qx * gz + qz * gx)
    dz = 0.5 * (qw * gz + qx * gy - qy * gx)
    a_norm = np.sqrt(np.sum(acc * acc, axis=-1))
    has_acc = a_norm > 0
    ax, ay, az = np.moveaxis(acc / np.where(has_acc, a_norm, 1.0)[..., None], -1, 0)
    f1 = 2.0 * (qx * qz - qw * qy) - ax
    f2 = 2.0 * (qw * qx + qy * qz) - ay
    f3 = 2.0 * (0.5 - qx * qx - qy * qy) - az
    sw = -2.0 * qy * f1 + 2.0 * qx * f2
    sx = 2.0 * qz * f1 + 2.0 * qw * f2 - 4.0 * qx * f3
    sy = -2.0 * qw * f1 + 2.0 * qz * f2 - 4.0 * qy * f3
    sz = 2.0 * qx * f1 + 2.0 * qy * f2
    f_sq = f1 * f1 + f2 * f2 + f3 * f3
    if mag is not None:
        m_norm = np.sqrt(np.sum(mag * mag, axis=-1))
        use_mag = m_norm > 0
        mx, my, mz = np.moveaxis(mag / np.where(use_mag, m_norm, 1.0)[..., None], -1, 0)
        # earth-frame field h = q ⊗ m ⊗ q*, reduced to (bx, 0, bz)
        hw = -qx * mx - qy * my - qz * mz
        hx_ = qw * mx + qy * mz - qz * my
        hy_ = qw * my - qx * mz + qz * mx
        hz_ = qw * mz + qx * my - qy * mx
        hx = -hw * qx + hx_ * qw - hy_ * qz + hz_ * qy
        hy = -hw * qy + hx_ * qz + hy_ * qw - hz_ * qx
        hz = -hw * qz - hx_ * qy + hy_ * qx + hz_ * qw
        bx = np.sqrt(hx * hx + hy * hy)
        bz = hz
        f4 = 2.0 * bx * (0.5 - qy * qy - qz * qz) + 2.0 * bz * (qx * qz - qw * qy) - mx
        f5 = 2.0 * bx * (qx * qy - qw * qz) + 2.0 * bz * (qw * qx + qy * qz) - my
        f6 = 2.0 * bx * (qw * qy + qx * qz) + 2.0 * bz * (0.5 - qx * qx - qy * qy) - mz
        mw = -2.0 * bz * qy * f4 + (-2.0 * bx * qz + 2.0 * bz * qx) * f5 + 2.0 * bx * qy * f6
        mx_ = 2.0 * bz * qz * f4 + (2.0 * bx * qy + 2.0 * bz * qw) * f5
        mx_ = mx_ + (2.0 * bx * qz - 4.0 * bz * qx) * f6
        my_ = (-4.0 * bx * qy - 2.0 * bz * qw) * f4 + (2.0 * bx * qx + 2.0 * bz * qz) * f5
        my_ = my_ + (2.0 * bx * qw - 4.0 * bz * qy) * f6
        mz_ = (-4.0 * bx * qz + 2.0 * bz * qx) * f4 + (-2.0 * bx * qw + 2.0 * bz * qy) * f5
        mz_ = mz_ + 2.0 * bx * qx * f6
        sw = np.where(use_mag, sw + mw, sw)
        sx = np.where(use_mag, sx + mx_, sx)
        sy = np.where(use_mag, sy + my_, sy)
        sz = np.where(use_mag, sz + mz_, sz)
        f_sq = np.where(use_mag, f_sq + f4 * f4 + f5 * f5 + f6 * f6, f_sq)
    s_norm = np.sqrt(sw * sw + sx * sx + sy * sy + sz * sz)
    corr = has_acc & (f_sq > 0) & (s_norm > 0)
    k = np.where(corr, gain / np.where(s_norm > 0, s_norm, 1.0), 0.0)
    nw = qw + (dw - k * sw) * dt
    nx = qx + (dx - k * sx) * dt
    ny = qy + (dy - k * sy) * dt
    nz = qz + (dz - k * sz) * dt
    return np.stack(_normalise((nw, nx, ny, nz)), axis=-1)


def _mahony_step(
    q: np.ndarray,
    bias: np.ndarray,
    gyr: np.ndarray,
    acc: np.ndarray,
    dt: np.ndarray,
    k_p: np.ndarray,
    k_i: float,
    exact: bool = False,
    linear: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """ahrs.filters.Mahony.updateIMU for M sensors at once: error e = a × v, bias integral."""
    M = len(q)
    _, _, e, has_acc = _gravity_and_error(q, acc, linear)
    e = -e  # ahrs: ω_mes = a × v
    h = has_acc[:, None]
    b = np.where(h, bias - (k_i * dt)[:, None] * e, bias)
    omega = np.where(h, gyr - b + k_p[:, None] * e, gyr)
    if exact:
        c, sv = _rotation_half(omega, dt)
        qn = q * c[:, None] + (q[:, :, None] * sv[:, None, :]).reshape(M, 12) @ _QV
    else:
        qn = q + (0.5 * dt)[:, None] * ((q[:, :, None] * omega[:, None, :]).reshape(M, 12) @ _QV)
    return qn * (1.0 / np.sqrt(_rows_dot(qn, qn)))[:, None], b


# -- errors against a reference (BROAD's definitions) -------------------------------------------
def orientation_errors(
    q_est: np.ndarray,
    q_ref: np.ndarray,
    valid: np.ndarray | None = None,
    remove_heading_offset: bool = False,
) -> dict[str, float]:
    """RMS total / heading / inclination error (degrees) of estimated vs reference orientation.

    The definitions are BROAD's (Laidig et al. 2021, `broad_utils.py`): the error quaternion in
    the earth frame q_e = q_est ⊗ q_ref*, total = its rotation angle, heading = its part about
    earth z, inclination = the rest. Both quaternions must map the same sensor frame into the
    same earth frame (for BROAD: the optical reference is already aligned to the IMU's axes).
    6-D filters have an arbitrary heading: `remove_heading_offset` first removes the mean
    earth-frame heading offset (circular mean over `valid`), so heading then measures drift;
    the inclination error does not depend on it.
    """
    q_est = np.asarray(q_est, float)
    q_ref = np.asarray(q_ref, float)
    q_est = q_est / np.linalg.norm(q_est, axis=-1, keepdims=True)
    q_ref = q_ref / np.linalg.norm(q_ref, axis=-1, keepdims=True)
    sel = np.ones(len(q_est), bool) if valid is None else np.asarray(valid, bool).copy()
    q_e = quat_multiply(q_est, quat_conjugate(q_ref))
    sel &= np.isfinite(q_e).all(axis=-1)
    if remove_heading_offset:
        psi = 2.0 * np.arctan2(q_e[..., 3], q_e[..., 0])
        mean_psi = np.angle(np.mean(np.exp(1j * psi[sel])))
        q_e = quat_multiply(yaw_quat(-mean_psi), q_e)
    total = 2.0 * np.arccos(np.clip(np.abs(q_e[..., 0]), 0.0, 1.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        heading = 2.0 * np.arctan(np.abs(q_e[..., 3] / q_e[..., 0]))
    incl = 2.0 * np.arccos(np.clip(np.sqrt(q_e[..., 0] ** 2 + q_e[..., 3] ** 2), 0.0, 1.0))

    def rms(x: np.ndarray) -> float:
        return float(np.degrees(np.sqrt(np.nanmean(x[sel] ** 2))))

    return {"total": rms(total), "heading": rms(heading), "inclination": rms(incl)}


#: Madgwick β used by the estimators (rad/s): ahrs's 0.033 trusts the gyro so much that tilt
#: errors from gyro noise and start-up linger; BROAD's best common β for its real IMU was 0.12.
DEFAULT_GAIN = 0.1
