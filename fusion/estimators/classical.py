"""The classical IMU estimator: orientation filter per sensor → calibration → joint angles.

This is the reference the neural estimators must beat (Shin et al. compare IMUNet with a
"calibrated-orientation" method of this kind). Per subject:

1. every sensor's orientation is tracked by one `fusion.orientation.OrientationFilter` (all
   13 sensors in one vectorised step; in `update_many` all subjects' sensors in one step);
2. until calibrated the estimator answers NaN. It waits for the subject to stand still
   (trunk and leg sensors quiet) for at least `standing_s`, then to walk for `walking_s`
   (≈ 4 strides), and runs `fusion.calibration.calibrate` (sensor mounting, per-filter
   heading, gyro bias); then it replays the buffered walk through the filters with the bias
   removed, so answers start with the right tilt. That one tick costs ~0.1–0.2 s per subject
   (measured by `gait-stream filter-check`). If the pelvis cannot be calibrated (no clear
   walk) it waits for the next stand + walk;
3. segment orientations R_seg = Yaw(ψ) · R_filter · mountingᵀ → the published angles, with the
   direction of progression = the pelvis yaw smoothed by a causal two-pole low-pass
   (`heading_tau_s` per pole; the ±5° pelvis rotation at stride frequency passes at ~10 %).

Missing data (imu_mask False or non-finite) → the angles that need that segment are NaN at
those ticks; the others continue. The filter bridges a short gap (≤ `max_gap_s`: the rotation
over it is integrated from the gyro readings on both sides); after a longer one the sensor's
heading is lost: its filter restarts from gravity with a gain ramping down over `settle_s`,
and its heading is re-acquired over `reacquire_s` from its mean yaw relative to a reference
segment (pelvis; for the pelvis itself the thighs and sternum), as tracked before the gap.

The filter takes each sensor's dt from the tick times (and bridges gaps with it), so it runs
unchanged on samples at the IMUs' native rate if the runtime feeds those (set `rate`).

`mounting="nominal"` skips the functional calibration and assumes every sensor's axes are its
segment's (only the heading comes from the standing pose): the textbook method whose errors
grow with sensor misplacement (Shin et al.: 27.9° at 30° misplacement).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field, fields, replace

import numpy as np
from scipy.signal import lfilter

from fusion.angles import JOINTS, angles_from_rotations
from fusion.calibration import (
    Calibration,
    CalibrationConfig,
    calibrate,
    standing_pose_dofs,
    standing_rotations,
)
from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.orientation import FilterConfig, OrientationFilter, quat_to_matrix
from fusion.skeleton import ANGLES, GRAVITY, SEGMENT_INDEX, SEGMENTS


# -- angles from segment rotations, vectorised --------------------------------------------------
def _angle_segments() -> dict[str, tuple[str, ...]]:
    """The segments each published angle is computed from."""
    needs: dict[str, tuple[str, ...]] = {}
    for name in ANGLES:
        if name.startswith("foot_progression_"):
            needs[name] = (f"foot_{name[-1]}", "pelvis")  # heading comes from the pelvis
            continue
        joint = next((j for j, spec in JOINTS.items() if name in spec[2]), None)
        if joint is None:
            raise ValueError(f"angle {name!r} has no joint in fusion.angles.JOINTS")
        parent, child = JOINTS[joint][:2]
        needs[name] = (child,) if parent is None else (parent, child)
    return needs


ANGLE_SEGMENTS = _angle_segments()
#: (len(ANGLES), 13) bool: which segments each published angle needs
ANGLE_NEEDS = np.zeros((len(ANGLES), len(SEGMENTS)), bool)
for _a, _name in enumerate(ANGLES):
    for _s in ANGLE_SEGMENTS[_name]:
        ANGLE_NEEDS[_a, SEGMENT_INDEX[_s]] = True


def angles_from_segments(
    R_seg: np.ndarray, heading: np.ndarray, available: np.ndarray | None = None
) -> np.ndarray:
    """`fusion.angles.angles_from_rotations` for live data with gaps.

    `available` (N, 13) bool: angles needing an unavailable segment come out NaN (as do
    those of non-finite segments), while the others are still stated.
    """
    R = np.asarray(R_seg, float)
    finite = np.isfinite(R).all(axis=(-1, -2))
    avail = finite if available is None else (finite & np.asarray(available, bool))
    out = angles_from_rotations(np.where(finite[..., None, None], R, np.eye(3)), heading)
    missing = (~avail[:, None, :] & ANGLE_NEEDS[None]).any(axis=-1)
    out[missing] = np.nan
    return out


def _yaw(R: np.ndarray) -> np.ndarray:
    return np.arctan2(R[..., 1, 0], R[..., 0, 0])


def _wrap(x: np.ndarray) -> np.ndarray:
    return (np.asarray(x) + np.pi) % (2 * np.pi) - np.pi


# -- configuration and per-subject state -------------------------------------------------------
@dataclass(frozen=True)
class ClassicalImuConfig:
    """Every knob of the classical IMU estimator (defaults tuned on synthetic walks)."""

    #: Madgwick at ahrs's own β = 0.033 with second-order integration: the most robust of
    #: the variants tried over six synthetic walkers (filter-check and the report list them)
    filter: FilterConfig = field(
        default_factory=lambda: FilterConfig("madgwick", gain=0.033, integration="exact")
    )
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    mounting: str = "functional"  # or "nominal": sensor axes assumed = segment axes
    rate: float = 60.0  # Hz, nominal tick rate (first dt, heading filter)
    standing_s: float = 1.0  # still time needed before the walk ...
    standing_max_s: float = 5.0  # ... and the most of it used (gyro bias, gravity)
    walking_s: float = 5.0  # walk used for calibration (≈ 4 strides)
    still_gyr: float = 0.15  # rad/s, every present sensor below this ...
    still_acc: float = 0.5  # m/s², ... and | |f| − g | below this → standing still
    onset_guard_s: float = 0.3  # still ticks just before movement count as walk onset
    #: a longer gap loses that sensor's orientation (a sensor gone, not a burst of drops):
    #: shorter ones are bridged, imperfectly for a fast limb (a foot in swing turns ~1 rad in
    #: 0.1 s), but re-acquiring costs settle_s + reacquire_s of NaN and is less exact still
    max_gap_s: float = 0.5
    settle_s: float = 2.0  # after a restart: for this long ...
    settle_gain: float = 1.0  # ... a β ramping down from this (rad/s) to the filter's
    reacquire_s: float = 2.0  # window for re-acquiring a lost sensor's heading
    relative_tau_s: float = 10.0  # memory of each segment's mean yaw relative to its reference
    heading_tau_s: float = 0.5  # per pole of the heading low-pass

    def __post_init__(self) -> None:
        if self.mounting not in ("functional", "nominal"):
            raise ValueError(f"mounting={self.mounting!r}: 'functional' or 'nominal'")
        for name in ("rate", "standing_s", "max_gap_s", "heading_tau_s", "reacquire_s"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ClassicalImuConfig.{name}={v!r}: must be > 0")
        if self.mounting == "functional" and not self.walking_s > 0:
            raise ValueError(f"ClassicalImuConfig.walking_s={self.walking_s!r}: must be > 0")


#: sensors whose stillness means "standing": trunk and legs
_STILL_JUDGES = np.array(
    [s in ("pelvis", "sternum") or s.startswith(("thigh", "shank", "foot")) for s in SEGMENTS]
)

#: reference segments for re-acquiring a lost sensor's heading
_REFERENCE = {s: ("pelvis",) for s in SEGMENTS}
_REFERENCE["pelvis"] = ("thigh_l", "thigh_r", "sternum")
_REF_MATRIX = np.zeros((len(SEGMENTS), len(SEGMENTS)))
for _s, _refs in _REFERENCE.items():
    for _r in _refs:
        _REF_MATRIX[SEGMENT_INDEX[_s], SEGMENT_INDEX[_r]] = 1.0


class _SubjectState:
    """Everything one subject carries between ticks (a few kB)."""

    def __init__(self, cfg: ClassicalImuConfig) -> None:
        n = len(SEGMENTS)
        self.t_last = np.full(n, np.nan)  # last valid sample per sensor
        self.calibration: Calibration | None = None
        self.calib_notes: dict[str, str] = {}
        # calibration capture
        keep = int(
            np.ceil((max(cfg.standing_s, cfg.standing_max_s) + cfg.onset_guard_s) * cfg.rate)
        )
        self.buffer: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=keep)
        self.still_count = 0  # consecutive still ticks
        self.stand: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self.walk: list[tuple[np.ndarray, np.ndarray]] = []
        self.walk_start = np.nan
        # heading low-pass: unwrapped pelvis yaw through two poles
        self.yaw_prev = np.nan
        self.yaw_unwrapped = np.nan
        self.heading_zi: np.ndarray | None = None
        # lost sensors and re-acquisition
        self.lost = np.zeros(n, bool)
        self.restart_t = np.full(n, np.nan)
        self.reacq_sum = np.zeros(n, complex)
        self.reacq_n = np.zeros(n)
        self.rel_mean = np.zeros(n, complex)  # EMA of exp(i·(yaw − reference yaw))


class ClassicalImuEstimator(Estimator):
    """Orientation filter + functional calibration + relative segment rotations."""

    name = "classical"
    lookahead = 0
    modalities = frozenset({"imu"})

    def __init__(self, config: ClassicalImuConfig | None = None, **options: object) -> None:
        cfg = config or ClassicalImuConfig()
        if options:
            flt = {k[7:]: options.pop(k) for k in list(options) if k.startswith("filter_")}
            try:
                if flt:
                    cfg = replace(cfg, filter=replace(cfg.filter, **flt))
                cfg = replace(cfg, **options)  # type: ignore[arg-type]
            except TypeError as e:
                known = [f.name for f in fields(ClassicalImuConfig)]
                known += [f"filter_{f.name}" for f in fields(FilterConfig)]
                raise ValueError(f"classical estimator: {e}; options are {known}") from e
        self.config = cfg
        self._states: dict[str, _SubjectState] = {}
        self._filters: dict[str, OrientationFilter] = {}

    # -- public -------------------------------------------------------------------------------
    def reset(self, subject: str | None = None) -> None:
        if subject is None:
            self._states.clear()
            self._filters.clear()
        else:
            self._states.pop(subject, None)
            self._filters.pop(subject, None)

    def calibration(self, subject: str) -> Calibration | None:
        """The subject's calibration (None until calibrated)."""
        st = self._states.get(subject)
        return None if st is None else st.calibration

    def calibration_notes(self, subject: str) -> dict[str, str]:
        """Per-segment notes of the last calibration attempt (why a segment is unusable)."""
        st = self._states.get(subject)
        return {} if st is None else dict(st.calib_notes)

    def update(self, subject: str, batch: SyncedBatch) -> AnglesResult:
        return self.update_many({subject: batch})[subject]

    def update_many(self, batches: dict[str, SyncedBatch]) -> dict[str, AnglesResult]:
        """All subjects' sensors go through one filter step per tick (ticks aligned by index:
        subjects with fewer ticks simply sit out the later steps)."""
        cfg = self.config
        subjects = list(batches)
        out: dict[str, AnglesResult] = {}
        if not subjects:
            return out
        for s in subjects:
            if s not in self._states:
                self._states[s] = _SubjectState(cfg)
                self._filters[s] = OrientationFilter((len(SEGMENTS),), cfg.filter)
        n_max = max(len(batches[s].t) for s in subjects)
        S, n = len(subjects), len(SEGMENTS)
        # stack subjects into one filter for the batch, then write the state back
        stacked = OrientationFilter((S, n), cfg.filter)
        stacked._q = np.concatenate([self._filters[s]._q for s in subjects])
        stacked._bias = np.concatenate([self._filters[s]._bias for s in subjects])
        stacked._init = np.concatenate([self._filters[s]._init for s in subjects])
        stacked._prev_gyr = np.concatenate([self._filters[s]._prev_gyr for s in subjects])
        stacked.gain = np.stack([self._filters[s].gain for s in subjects])
        states = [self._states[s] for s in subjects]
        gyr = np.full((n_max, S, n, 3), np.nan)
        acc = np.full((n_max, S, n, 3), np.nan)
        mask = np.zeros((n_max, S, n), bool)
        tick = np.full((n_max, S), np.nan)
        for k, s in enumerate(subjects):
            b = batches[s]
            m = len(b.t)
            if b.imu.shape[1:] != (n, 6):
                raise ValueError(f"subject {s}: imu has shape {b.imu.shape}, expected (N, 13, 6)")
            gyr[:m, k] = b.imu[..., :3]
            acc[:m, k] = b.imu[..., 3:]
            mask[:m, k] = b.imu_mask & np.isfinite(b.imu).all(axis=-1)
            tick[:m, k] = b.t
            cal = states[k].calibration
            if cal is not None:
                gyr[:m, k] -= cal.gyro_bias
        Q = np.empty((n_max, S, n, 4))
        for i in range(n_max):
            Q[i] = self._tick(stacked, states, tick[i], gyr[i], acc[i], mask[i])
        for k, s in enumerate(subjects):
            f = self._filters[s]
            f._q = stacked._q.reshape(S, n, 4)[k].copy()
            f._bias = stacked._bias.reshape(S, n, 3)[k].copy()
            f._init = stacked._init.reshape(S, n)[k].copy()
            f._prev_gyr = stacked._prev_gyr.reshape(S, n, 3)[k].copy()
            f.gain = stacked.gain[k].copy()
        # angles: all subjects' ticks through one closed-form call
        R_all, avail_all, head_all, rows = [], [], [], []
        for k, s in enumerate(subjects):
            m = len(batches[s].t)
            st = states[k]
            if m == 0:
                out[s] = AnglesResult.empty()
                continue
            R, avail, heading = self._segments(st, batches[s].t, Q[:m, k], mask[:m, k])
            R_all.append(R)
            avail_all.append(avail)
            head_all.append(heading)
            rows.append((s, m))
        if rows:
            ang = angles_from_segments(
                np.concatenate(R_all), np.concatenate(head_all), np.concatenate(avail_all)
            )
            a = 0
            for s, m in rows:
                out[s] = AnglesResult(
                    t=np.asarray(batches[s].t, float).copy(), angles=ang[a : a + m]
                )
                a += m
        return out

    # -- one tick of every subject --------------------------------------------------------------
    def _tick(
        self,
        filt: OrientationFilter,
        states: list[_SubjectState],
        t: np.ndarray,
        gyr: np.ndarray,
        acc: np.ndarray,
        mask: np.ndarray,
    ) -> np.ndarray:
        cfg = self.config
        t_last = np.stack([st.t_last for st in states])
        dt = t[:, None] - t_last
        dt = np.where(np.isfinite(dt) & (dt > 0), dt, 1.0 / cfg.rate)
        # a long gap: the sensor's orientation (and, once calibrated, heading) is lost
        gap = mask & np.isfinite(t_last) & (t[:, None] - t_last > cfg.max_gap_s)
        if gap.any():
            filt.reset(gap)
            for k in np.flatnonzero(gap.any(axis=1)):
                st = states[k]
                # the sensor's filter restarts: once calibrated (or once this walk is used
                # for calibration) its heading has to be re-acquired
                st.lost |= gap[k]
                st.restart_t[gap[k]] = t[k]
                st.reacq_sum[gap[k]] = 0.0
                st.reacq_n[gap[k]] = 0.0
        # raised gain while a restarted sensor settles
        restart = np.stack([st.restart_t for st in states])
        since = t[:, None] - restart
        settling = np.isfinite(restart) & (since < cfg.settle_s)
        base = cfg.filter.gain if cfg.filter.algorithm == "madgwick" else cfg.filter.k_p
        if settling.any():
            # trust gravity fast, then less and less (a ramp down to the base gain): the
            # tilt settles on the average specific force of the first strides
            ramp = np.clip(1.0 - since / cfg.settle_s, 0.0, 1.0)
            boosted = base + (max(cfg.settle_gain, base) - base) * np.nan_to_num(ramp)
            filt.gain = np.where(settling, boosted, base)
        else:
            filt.gain = np.full(mask.shape, base)
        q = filt.step(gyr, acc, dt, mask)
        for k, st in enumerate(states):
            if not np.isfinite(t[k]):
                continue
            st.t_last = np.where(mask[k], t[k], st.t_last)
            if st.calibration is None:
                q_new = self._capture(st, t[k], gyr[k], acc[k], q[k], mask[k])
                if q_new is not None:  # just calibrated: continue from the replayed walk
                    where = np.zeros((len(states), len(SEGMENTS)), bool)
                    where[k] = np.isfinite(q_new).all(axis=1)
                    q_new = np.where(where[k][:, None], q_new, 1.0)
                    filt.initialize(np.broadcast_to(q_new, (len(states), *q_new.shape)), where)
                    q = filt.q
        return q.copy()

    # -- calibration capture --------------------------------------------------------------------
    def _restart_capture(self, st: _SubjectState) -> None:
        st.buffer.clear()
        st.still_count = 0
        st.stand = None
        st.walk = []

    def _capture(
        self,
        st: _SubjectState,
        t: float,
        gyr: np.ndarray,
        acc: np.ndarray,
        q: np.ndarray,
        mask: np.ndarray,
    ) -> np.ndarray | None:
        """Calibration state machine, one tick: the buffer holds the current still streak; a
        streak of ≥ standing_s followed by movement starts the walk; standing still that long
        again during the walk starts over from that standing."""
        cfg = self.config
        g = np.where(mask[:, None], gyr, np.nan)
        a = np.where(mask[:, None], acc, np.nan)
        judge = mask & _STILL_JUDGES  # head and arms may drift while the body stands
        with np.errstate(invalid="ignore"):
            still = bool(
                judge.any()
                and np.nanmax(np.linalg.norm(g[judge], axis=1)) < cfg.still_gyr
                and np.nanmax(np.abs(np.linalg.norm(a[judge], axis=1) - GRAVITY)) < cfg.still_acc
            )
        need_still = max(1, round(cfg.standing_s * cfg.rate))
        st.still_count = st.still_count + 1 if still else 0
        if still:
            st.buffer.append((t, g, a, q.copy()))
        if st.stand is None:
            if still:
                st.lost[:] = False  # a restart before this stance does not matter
                st.restart_t[:] = np.nan
            guard = round(cfg.onset_guard_s * cfg.rate)
            if not still and len(st.buffer) >= need_still + guard:
                # the whole still streak (as buffered) but its last `guard` ticks, which may
                # already hold the gentle onset of the walk: those belong to the walk
                recent = list(st.buffer)
                stand, onset = recent[: len(recent) - guard], recent[len(recent) - guard :]
                st.stand = (
                    np.stack([r[1] for r in stand]),
                    np.stack([r[2] for r in stand]),
                    stand[-1][3],
                )
                st.walk = [(r[1], r[2]) for r in onset] + [(g, a)]
                st.walk_start = stand[-1][0]
                if cfg.mounting == "nominal":
                    return self._finish_calibration(st)
            if not still:
                st.buffer.clear()
            return None
        if st.still_count >= need_still:  # standing again: the next walk starts over
            st.stand = None
            st.walk = []
            return None
        st.walk.append((g, a))
        if not still:
            st.buffer.clear()
        if len(st.walk) >= round(cfg.walking_s * cfg.rate):
            return self._finish_calibration(st)
        return None

    def _finish_calibration(self, st: _SubjectState) -> np.ndarray | None:
        """Calibrate from the captured stand + walk; returns the filter state to continue
        from (q (13, 4)) when calibrated."""
        cfg = self.config
        assert st.stand is not None
        sg, sa, q_stand = st.stand
        if cfg.mounting == "nominal":
            cal = _nominal_calibration(sg, sa, q_stand, cfg.calibration.standing_pose)
        else:
            wg = np.stack([w[0] for w in st.walk])
            wa = np.stack([w[1] for w in st.walk])
            cal = calibrate(sg, sa, q_stand, wg, wa, 1.0 / cfg.rate, cfg.calibration)
        st.calib_notes = cal.notes
        walk = list(st.walk)
        self._restart_capture(st)
        if not cal.ok[SEGMENT_INDEX["pelvis"]]:
            return None  # no usable heading: wait for the next stand + walk
        st.calibration = cal
        # the relative-yaw memory starts from the assumed stance (a toed-out foot, …)
        R0 = standing_rotations(standing_pose_dofs(cfg.calibration.standing_pose))
        st.rel_mean = np.exp(1j * (_yaw(R0) - self._reference_yaw(_yaw(R0)[None], cal.ok[None])[0]))
        st.rel_mean = np.where(np.isfinite(st.rel_mean), st.rel_mean, 0.0)
        # sensors whose filter restarted during the walk (a long gap) keep their live state
        # and re-acquire their heading; the others ran on biased gyros during the walk:
        # replay it from the standing orientation with the bias removed
        st.lost &= cal.ok
        replay = OrientationFilter((len(SEGMENTS),), cfg.filter)
        replay.initialize(q_stand)
        for g, a in walk:
            replay.step(g - cal.gyro_bias, a, 1.0 / cfg.rate, np.isfinite(g).all(axis=1))
        return np.where(st.lost[:, None], np.nan, replay.q)

    # -- segment orientations, heading, re-acquisition -----------------------------------------
    def _segments(
        self, st: _SubjectState, t: np.ndarray, q: np.ndarray, mask: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        cfg = self.config
        m, n = mask.shape
        cal = st.calibration
        if cal is None:
            return np.full((m, n, 3, 3), np.nan), np.zeros((m, n), bool), np.zeros(m)
        R = cal.segment_rotations(q)
        yaw = _yaw(R)  # (m, 13), NaN for segments not calibrated
        healthy = cal.ok[None] & mask & ~st.lost[None]
        self._reacquire(st, t, yaw, mask)
        healthy = cal.ok[None] & mask & ~st.lost[None]
        # the relative-yaw memory of healthy segments
        ref_yaw = self._reference_yaw(yaw, healthy)
        rel = np.exp(1j * (yaw - ref_yaw))
        use = healthy & np.isfinite(ref_yaw)
        alpha = 1.0 - np.exp(-1.0 / (cfg.relative_tau_s * cfg.rate))
        for i in range(m):  # a scalar recursion per tick (13 complex numbers)
            u = use[i]
            st.rel_mean[u] += alpha * (rel[i, u] - st.rel_mean[u])
        heading = self._heading(
            st, yaw[:, SEGMENT_INDEX["pelvis"]], healthy[:, SEGMENT_INDEX["pelvis"]]
        )
        return R, healthy, heading

    def _reference_yaw(self, yaw: np.ndarray, healthy: np.ndarray) -> np.ndarray:
        """(m, 13) circular mean yaw of each segment's healthy reference segments."""
        z = np.where(healthy, np.exp(1j * np.where(np.isfinite(yaw), yaw, 0.0)), 0.0)
        zr = z @ _REF_MATRIX.T
        with np.errstate(invalid="ignore"):
            return np.where(np.abs(zr) > 1e-9, np.angle(zr), np.nan)

    def _reacquire(
        self, st: _SubjectState, t: np.ndarray, yaw: np.ndarray, mask: np.ndarray
    ) -> None:
        cfg = self.config
        cal = st.calibration
        if cal is None or not st.lost.any():
            return
        healthy = cal.ok[None] & mask & ~st.lost[None]
        ref = self._reference_yaw(yaw, healthy)
        settled = np.isfinite(st.restart_t)[None] & (
            t[:, None] - st.restart_t[None] >= cfg.settle_s
        )
        use = st.lost[None] & mask & settled & np.isfinite(ref) & np.isfinite(yaw)
        if not use.any():
            return
        st.reacq_sum += np.where(use, np.exp(1j * (yaw - ref)), 0.0).sum(axis=0)
        st.reacq_n += use.sum(axis=0)
        done = st.lost & (st.reacq_n >= cfg.reacquire_s * cfg.rate)
        if done.any():
            # choose ψ so the segment's mean yaw relative to its reference is what it was
            shift = np.angle(st.rel_mean[done]) - np.angle(st.reacq_sum[done])
            cal.earth_yaw[done] = _wrap(cal.earth_yaw[done] + shift)
            st.lost[done] = False
            st.restart_t[done] = np.nan
            # the ticks of this batch already computed with the old ψ: fix their yaw
            yaw[:, done] = _wrap(yaw[:, done] + shift)

    def _heading(self, st: _SubjectState, pelvis_yaw: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Causal two-pole low-pass of the unwrapped pelvis yaw (held where it is missing)."""
        cfg = self.config
        m = len(pelvis_yaw)
        x = np.empty(m)
        for i in range(m):
            if ok[i] and np.isfinite(pelvis_yaw[i]):
                if np.isfinite(st.yaw_prev):
                    st.yaw_unwrapped += _wrap(pelvis_yaw[i] - st.yaw_prev)
                else:
                    st.yaw_unwrapped = pelvis_yaw[i]
                st.yaw_prev = pelvis_yaw[i]
            x[i] = st.yaw_unwrapped
        if not np.isfinite(x).any():
            return np.zeros(m)
        first = x[np.isfinite(x)][0]
        x = np.where(np.isfinite(x), x, first)
        alpha = 1.0 - np.exp(-1.0 / (cfg.heading_tau_s * cfg.rate))
        b, a = [alpha], [1.0, alpha - 1.0]
        if st.heading_zi is None:
            st.heading_zi = np.array([(1.0 - alpha) * first, (1.0 - alpha) * first])
        y1, z1 = lfilter(b, a, x, zi=st.heading_zi[:1])
        y2, z2 = lfilter(b, a, y1, zi=st.heading_zi[1:])
        st.heading_zi = np.concatenate([z1, z2])
        return y2


def _nominal_calibration(
    sg: np.ndarray, sa: np.ndarray, q_stand: np.ndarray, standing_pose: str
) -> Calibration:
    """Mounting assumed = identity; heading ψ from the assumed stance; bias from standing."""
    n = len(SEGMENTS)
    with np.errstate(invalid="ignore"):
        bias = np.nanmean(sg, axis=0)
        g = np.nanmean(np.linalg.norm(sa, axis=-1), axis=0)
    ok = np.isfinite(bias).all(axis=1) & np.isfinite(q_stand).all(axis=1)
    R = quat_to_matrix(np.where(np.isfinite(q_stand), q_stand, (1.0, 0, 0, 0)))
    R0 = standing_rotations(standing_pose_dofs(standing_pose))
    D = np.einsum("sij,skj->sik", R0, R)  # R0 · I · R_standᵀ
    return Calibration(
        mounting=np.tile(np.eye(3), (n, 1, 1)),
        earth_yaw=_yaw(D),
        gyro_bias=np.where(np.isfinite(bias), bias, 0.0),
        gravity=np.where(np.isfinite(g), g, GRAVITY),
        ok=ok,
        notes={s: "nominal mounting" for s in SEGMENTS},
    )
