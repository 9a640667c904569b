"""The classical IMU estimator: orientation filter per sensor → calibration → joint angles.

This is the reference the neural estimators must beat (Shin et al. compare IMUNet with a
"calibrated-orientation" method of this kind). Per subject:

1. every sensor's orientation is tracked by one `fusion.orientation.OrientationFilter` (all
   13 sensors in one vectorised step; in `update_many` all subjects' sensors in one step);
2. until calibrated the estimator answers NaN. It waits for the subject to stand still
   (trunk and leg sensors quiet) for at least `standing_s`, then to walk for `walking_s`
   (≈ 4 strides), and runs `fusion.calibration.calibrate` (sensor mounting, per-filter
   heading, gyro bias). The gyro bias is estimated from the standing window as soon as the
   walk starts and removed from every gyro sample the filters see from then on, so when the
   walk has been captured the live filters already hold what a replay of the walk without
   bias would give: no replay, and the calibration tick costs a few ms (closed-form
   estimates and one vectorised strapdown). A walk that is not periodic (no stride found:
   sitting down, standing up, shuffling), whose legs move together (repeated sit-to-stand,
   squats) or after which the pelvis cannot be calibrated is rejected: the estimator waits
   for the next stand + walk. After calibration every later
   stand refines the bias (`bias_memory_s`): one short stand leaves the bias about the
   vertical off by the gyro noise, a heading drift that nothing else corrects. And a stand
   in the calibration posture resets each leg segment's heading relative to the pelvis to
   the stance's (`stand_heading_deg`), as the calibration set it: bursts of lost samples
   bridged over a swinging limb turn leg headings a little each, and with no magnetometer
   only this assumption sees it (a 5-min run's last minute: 4.99° → 1.75°);
3. segment orientations R_seg = Yaw(ψ) · R_filter · mountingᵀ → the published angles, with the
   direction of progression = the pelvis yaw smoothed by a causal two-pole low-pass
   (`heading_tau_s` per pole; the ±5° pelvis rotation at stride frequency passes at ~10 %).

Reproducible on the live path: everything is decided per tick from the tick's time and data,
never per call, so the same ticks give the same calibration and angles however they are cut
into `update` calls (tests/test_classical_estimator.py checks 1e-6). Standing and walking are
measured in time on the tick clock (ticks the runtime dropped leave NaN rows in the capture, not
a shorter walk); a tick whose sensors are all masked neither breaks nor extends a stand; a
tick that is not later than the previous one (a duplicate or late tick) is ignored and
answered NaN.

Missing data (imu_mask False or non-finite) → the angles that need that segment are NaN at
those ticks; the others continue. The filter bridges a short gap (≤ `max_gap_s`: the rotation
over it is integrated from the gyro readings on both sides; after one longer than
`relevel_gap_s` a quiet tick whose gravity disagrees with the filter's tilt by more than
`relevel_deg` re-levels it, since a bridge over a swinging foot can tilt it by tens of
degrees); after a longer one the sensor's heading is lost: its filter restarts from gravity
with a gain ramping down over `settle_s`, and its heading is re-acquired over `reacquire_s`
from its mean yaw relative to a reference segment (pelvis; for the pelvis itself the thighs
and sternum), as tracked before the gap.

The filter takes each sensor's dt from the tick times (and bridges gaps with it), so it runs
unchanged on samples at the IMUs' native rate if the runtime feeds those (set `rate`).

`mounting="nominal"` skips the functional calibration and assumes every sensor's axes are its
segment's (only the heading comes from the standing pose): the textbook method whose errors
grow with sensor misplacement (Shin et al.: 27.9° at 30° misplacement).
"""

from __future__ import annotations

import warnings
from collections import deque
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from fusion.angles import JOINTS, angles_from_rotations
from fusion.calibration import (
    Calibration,
    CalibrationConfig,
    calibrate,
    stance_rotations,
    standing_estimates,
)
from fusion.estimators.base import AnglesResult, Estimator, SyncedBatch
from fusion.estimators.heading import HeadingLowpass, heading_step_many
from fusion.orientation import FilterConfig, OrientationFilter, quat_to_matrix
from fusion.skeleton import ANGLES, GRAVITY, LEG_SEGMENTS, SEGMENT_INDEX, SEGMENTS


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
    #: standing still: every present trunk and leg sensor's |ω| below still_gyr and its
    #: | |f| − g | below still_acc. Set for real sensors (the qmt recording): quiet standing
    #: sways at up to 0.2–0.45 rad/s (sternum, pelvis) and a resting accelerometer's norm is
    #: off g by up to 0.4 m/s² (scale and bias errors); walking never has every leg sensor
    #: below 0.5 rad/s for a second (the swing leg turns at several rad/s)
    still_gyr: float = 0.5
    still_acc: float = 1.0
    onset_guard_s: float = 0.3  # still ticks just before movement count as walk onset
    #: still ticks just after movement are the end of a stop, not a stand: the stillness
    #: thresholds are loose, and a leg still turning at 0.1 rad/s reads as gyro bias (on
    #: start_stop's 1.3-2.7 s stands, skipping them took the bias error p90 from 47 to 4 mrad/s)
    settle_guard_s: float = 0.3
    #: ticks the runtime skipped (a stalled machine) or a gap with no trunk or leg sensor
    #: longer than this restart the capture: bridged over a moving body, a 0.2-0.4 s hole in
    #: the stand or walk left the live lab's knee angles 10-50 deg off
    capture_gap_s: float = 0.1
    #: a longer gap loses that sensor's orientation (a sensor gone, not a burst of drops):
    #: shorter ones are bridged, imperfectly for a fast limb (a foot in swing turns ~1 rad in
    #: 0.1 s), but re-acquiring costs settle_s + reacquire_s of NaN and is less exact still
    max_gap_s: float = 0.5
    #: a longer gap (still bridged) is followed, for relevel_s, by re-levelling on the
    #: sensor's quiet ticks (|ω| < still_gyr, | |f| − g | < still_acc) where its gravity is
    #: more than relevel_deg off the filter's (a 0.17 s gap on a foot in swing: ankle 25° off
    #: for 20 s before; 11° now; the evaluation's main set 3.31° → 2.78°)
    relevel_gap_s: float = 0.1
    relevel_s: float = 3.0
    relevel_deg: float = 20.0
    #: a gap of every sensor at once (the runtime skipped ticks, a hub dropped out) over
    #: relevel_gap_s across which a sensor may have turned more than this (its |ω| either
    #: side × the gap) loses that sensor, as a long gap: bridged, 0.4 s of skipped ticks in
    #: mid-walk left a knee 7-30° off (6.8° mean over 48 stalls; now 2.3°). One sensor's
    #: burst stays bridged (and re-levelled): losing it too cost 3-min holds 0.5° and 6 %
    #: coverage in their last minute
    bridge_rad: float = 0.5
    settle_s: float = 2.0  # after a restart: for this long ...
    settle_gain: float = 1.0  # ... a β ramping down from this (rad/s) to the filter's
    reacquire_s: float = 2.0  # window for re-acquiring a lost sensor's heading
    relative_tau_s: float = 10.0  # memory of each segment's mean yaw relative to its reference
    #: after calibration every later stand refines the gyro bias: a running mean weighted by
    #: standing time, the weight capped at this many seconds (0: off). Why: the bias about
    #: the vertical is the plain mean of one 1-2 s stand, off by ~0.5 mrad/s from gyro noise
    #: alone, and no gravity corrects the heading drift that leaves (~1.7°/min a sensor)
    bias_memory_s: float = 60.0
    #: ... from ticks where every trunk and leg sensor turns slower than this once the known
    #: bias is removed (rad/s): still_gyr lets a slow turn on the spot pass as standing, and
    #: a turn about the vertical is exactly what a bias estimate cannot tell from bias
    bias_still_gyr: float = 0.1
    #: every later stand in the calibration posture re-asserts the calibration's heading
    #: assumption: each thigh, shank and foot's mean yaw relative to the pelvis over the
    #: stand is set back to the assumed stance's, where it is off by at most this many
    #: degrees (0: off; a larger offset is taken as a stance of its own: a foot turned out).
    #: Why: with no magnetometer nothing sees a leg sensor's heading, and every burst of lost
    #: samples bridged over a swinging limb turns it a little (5-min start_stop, last minute:
    #: 4.99° lower-limb RMSE with the synthetic losses, 2.73° without)
    stand_heading_deg: float = 20.0
    #: ... "in the calibration posture": the segment's tilt within this many degrees of the
    #: stance's (sitting or squatting is still too, with other relative headings)
    stand_tilt_deg: float = 10.0
    heading_tau_s: float = 0.5  # per pole of the heading low-pass

    def __post_init__(self) -> None:
        if self.mounting not in ("functional", "nominal"):
            raise ValueError(f"mounting={self.mounting!r}: 'functional' or 'nominal'")
        for name in ("rate", "standing_s", "max_gap_s", "heading_tau_s", "reacquire_s"):
            v = getattr(self, name)
            if not np.isfinite(v) or v <= 0:
                raise ValueError(f"ClassicalImuConfig.{name}={v!r}: must be > 0")
        if not 0 <= self.settle_guard_s < self.standing_s:
            raise ValueError(
                f"ClassicalImuConfig.settle_guard_s={self.settle_guard_s!r}: must be >= 0 and "
                f"below standing_s ({self.standing_s})"
            )
        if self.mounting == "functional" and not self.walking_s > 0:
            raise ValueError(f"ClassicalImuConfig.walking_s={self.walking_s!r}: must be > 0")


#: sensors whose stillness means "standing": trunk and legs
_STILL_JUDGES = np.isin(SEGMENTS, ("pelvis", "sternum", *LEG_SEGMENTS))

#: segments whose heading a stand in the calibration posture resets (`stand_heading_deg`)
_STAND_HEADING = np.isin(SEGMENTS, LEG_SEGMENTS)

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
        self.t_tick = -np.inf  # last tick processed (later ticks only)
        self.calibration: Calibration | None = None
        self.calib_notes: dict[str, str] = {}
        #: removed from every gyro sample before the filter: the standing estimate from the
        #: start of a calibration walk on, then the calibration's
        self.bias = np.zeros((n, 3))
        # calibration capture: the current still streak (raw gyro, acc, filter q per tick)
        keep = int(
            np.ceil((max(cfg.standing_s, cfg.standing_max_s) + cfg.onset_guard_s) * cfg.rate)
        )
        self.buffer: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=keep)
        self.still_since = np.nan  # time of the first tick of the current still streak
        self.last_judged = np.nan  # time of the last tick with any judge sensor present
        self.stand: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.walk: list[tuple[float, np.ndarray, np.ndarray]] = []
        self.walk_start = np.nan
        self.heading = HeadingLowpass(cfg.heading_tau_s, cfg.rate)
        # lost sensors and re-acquisition
        self.lost = np.zeros(n, bool)
        self.restart_t = np.full(n, np.nan)
        self.reacq_sum = np.zeros(n, complex)
        self.reacq_n = np.zeros(n)
        self.rel_mean = np.zeros(n, complex)  # EMA of exp(i·(yaw − reference yaw))
        self.relevel_until = np.full(n, -np.inf)  # re-level on quiet ticks until then
        # after calibration: the current still streak (tick time, raw gyro, acc, filter q),
        # the standing seconds behind each sensor's bias, and heading resets from stands not
        # yet applied: (tick time, ψ shift (13,)), applied from that tick on
        self.rest: deque[tuple[float, np.ndarray, np.ndarray, np.ndarray]] = deque(maxlen=keep)
        self.bias_s = np.zeros(n)
        self.yaw_shifts: list[tuple[float, np.ndarray]] = []

    @property
    def standing(self) -> bool:
        """In a still streak (up to the last tick)."""
        return bool(np.isfinite(self.still_since))


def _gridded(
    times: np.ndarray, rows: list[np.ndarray], t0: float, rate: float
) -> tuple[np.ndarray, ...]:
    """Samples taken at `times` placed on the tick grid t0 + k/rate (NaN where no tick came:
    ticks the runtime dropped); one array (K, ...) per entry of `rows` (each (N, ...))."""
    k = np.round((np.asarray(times) - t0) * rate).astype(int)
    keep = k >= 0  # the onset guard is never before t0: no sample is dropped here
    size = int(k[keep].max()) + 1 if keep.any() else 0
    out = []
    for r in rows:
        g = np.full((size, *r.shape[1:]), np.nan)
        g[k[keep]] = r[keep]  # duplicates on one grid point: the later tick wins
        out.append(g)
    return tuple(out)


def _stand_grid(
    stand: list[tuple[Any, ...]], rate: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stand's (t, gyro, acc, …) rows: its tick times, and its gyro and accelerometer
    samples on the tick grid from its first tick."""
    times = np.array([r[0] for r in stand])
    gyr = np.stack([r[1] for r in stand])
    acc = np.stack([r[2] for r in stand])
    sg, sa = _gridded(times, [gyr, acc], times[0], rate)
    return times, sg, sa


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
        #: the filters of the subjects of the last call, stacked (S, 13): the state of record
        #: for those subjects (their `_filters` entries are stale) until a call with other
        #: subjects or a reset writes it back (`_unstack`); the live path calls with the same
        #: subjects every tick, so it neither stacks nor writes back per tick
        self._stack: OrientationFilter | None = None
        self._stack_key: tuple[str, ...] = ()
        # the assumed stance, once (it reads the normative curves: not on the calibration tick)
        self._R_stance = stance_rotations(cfg.calibration.standing_pose)

    # -- public -------------------------------------------------------------------------------
    def reset(self, subject: str | None = None) -> None:
        if subject is None:
            self._states.clear()
            self._filters.clear()
            self._stack, self._stack_key = None, ()
        else:
            if subject in self._stack_key:
                self._unstack()
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
        subjects with fewer ticks simply sit out the later steps). In the live steady state
        (one tick per subject per call, calibrated, no heading being re-acquired) the segment
        rotations, relative-yaw memories and headings of all subjects are one pass too: a
        4-subject tick's CPU fell from ~3.0 to ~1.2 ms (`gait-stream filter-check` times it)."""
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
        if n_max == 0:  # no tick for anyone (a stall emptied the batch): nothing to step
            return {s: AnglesResult.empty() for s in subjects}
        S, n = len(subjects), len(SEGMENTS)
        stacked = self._stacked(subjects)
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
            t = np.asarray(b.t, float)
            # only ticks later than every earlier one count (a repeated or late tick would
            # integrate the same motion twice): they are answered NaN
            prev = np.maximum.accumulate(np.concatenate([[states[k].t_tick], t]))[:-1]
            fresh = np.isfinite(t) & (t > prev)
            gyr[:m, k] = b.imu[..., :3]
            acc[:m, k] = b.imu[..., 3:]
            mask[:m, k] = b.imu_mask & np.isfinite(b.imu).all(axis=-1) & fresh[:, None]
            tick[:m, k] = np.where(fresh, t, np.nan)
        Q = np.empty((n_max, S, n, 4))
        # the first tick of each subject in this batch that is answered with a calibration
        start = [0 if st.calibration is not None else n_max for st in states]
        for i in range(n_max):
            Q[i] = self._tick(stacked, states, tick[i], gyr[i], acc[i], mask[i])
            for k, st in enumerate(states):
                if start[k] > i and st.calibration is not None:
                    start[k] = i
        # angles: all subjects' ticks through one closed-form call; the subjects in the steady
        # state (one fresh tick, calibrated, no heading to re-acquire) get their segments
        # together (`_segments_one_tick`), the others one by one
        steady = [
            k
            for k, s in enumerate(subjects)
            if len(batches[s].t) == 1
            and start[k] == 0
            and np.isfinite(tick[0, k])
            and not states[k].lost.any()
        ]
        together = dict(
            zip(
                steady,
                self._segments_one_tick([states[k] for k in steady], Q[0, steady], mask[0, steady]),
                strict=True,
            )
        )
        R_all, avail_all, head_all, rows = [], [], [], []
        for k, s in enumerate(subjects):
            m = len(batches[s].t)
            st = states[k]
            if m == 0:
                out[s] = AnglesResult.empty()
                continue
            if k in together:
                R, avail, heading = together[k]
            else:
                fresh = np.isfinite(tick[:m, k])
                R, avail, heading = self._segments(
                    st, tick[:m, k], Q[:m, k], mask[:m, k], min(start[k], m), fresh
                )
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

    # -- the stacked filter ---------------------------------------------------------------------
    def _stacked(self, subjects: list[str]) -> OrientationFilter:
        """One (S, 13) filter for these subjects, in this order: the one of the last call when
        the subjects are the same, else built from the per-subject filters."""
        key = tuple(subjects)
        if self._stack is not None and key == self._stack_key:
            return self._stack
        self._unstack()
        stacked = OrientationFilter((len(key), len(SEGMENTS)), self.config.filter)
        stacked._q = np.concatenate([self._filters[s]._q for s in key])
        stacked._bias = np.concatenate([self._filters[s]._bias for s in key])
        stacked._init = np.concatenate([self._filters[s]._init for s in key])
        stacked._prev_gyr = np.concatenate([self._filters[s]._prev_gyr for s in key])
        stacked.gain = np.stack([self._filters[s].gain for s in key])
        self._stack, self._stack_key = stacked, key
        return stacked

    def _unstack(self) -> None:
        """Write the stacked filter's state back to the per-subject filters."""
        stacked, key = self._stack, self._stack_key
        self._stack, self._stack_key = None, ()
        if stacked is None:
            return
        S, n = len(key), len(SEGMENTS)
        for k, s in enumerate(key):
            f = self._filters[s]
            f._q = stacked._q.reshape(S, n, 4)[k].copy()
            f._bias = stacked._bias.reshape(S, n, 3)[k].copy()
            f._init = stacked._init.reshape(S, n)[k].copy()
            f._prev_gyr = stacked._prev_gyr.reshape(S, n, 3)[k].copy()
            f.gain = stacked.gain[k].copy()

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
        # a long gap, or a shorter one of the whole body over a turning sensor (the rotation
        # across it would be guessed from the samples either side): the sensor's orientation
        # (and, once calibrated, heading) is lost
        span = np.where(mask & np.isfinite(t_last), t[:, None] - t_last, 0.0)
        gap = span > cfg.max_gap_s
        bridged = span > cfg.relevel_gap_s  # a burst of losses, bridged unless lost here
        newest = np.max(np.where(np.isfinite(t_last), t_last, -np.inf), axis=1)
        whole = (t - newest > cfg.relevel_gap_s)[:, None] & bridged
        if whole.any():
            turning = np.fmax(
                np.linalg.norm(gyr, axis=-1), np.linalg.norm(filt.last_gyro(), axis=-1)
            )
            gap |= whole & (np.nan_to_num(turning) * span > cfg.bridge_rad)
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
        self._set_gains(filt, states, t, gyr, acc, mask, bridged)
        q = filt.step(gyr - np.stack([st.bias for st in states]), acc, dt, mask)
        for k, st in enumerate(states):
            if not np.isfinite(t[k]):
                continue
            st.t_tick = t[k]
            st.t_last = np.where(mask[k], t[k], st.t_last)
            if st.calibration is None:
                self._capture(st, t[k], gyr[k], acc[k], q[k], mask[k])
            elif cfg.bias_memory_s > 0 or cfg.stand_heading_deg > 0:
                self._after_stands(st, t[k], gyr[k], acc[k], q[k], mask[k])
        return q.copy()

    def _set_gains(
        self,
        filt: OrientationFilter,
        states: list[_SubjectState],
        t: np.ndarray,
        gyr: np.ndarray,
        acc: np.ndarray,
        mask: np.ndarray,
        bridged: np.ndarray,
    ) -> None:
        """Each filter's gain for this tick: the base gain, raised where gravity should win.
        `bridged`: the sensors whose sample ends a gap longer than relevel_gap_s."""
        cfg = self.config
        base = cfg.filter.gain if cfg.filter.algorithm == "madgwick" else cfg.filter.k_p
        high = max(cfg.settle_gain, base)
        # raised while a restarted sensor settles
        restart = np.stack([st.restart_t for st in states])
        since = t[:, None] - restart
        settling = np.isfinite(restart) & (since < cfg.settle_s)
        if settling.any():
            # trust gravity fast, then less and less (a ramp down to the base gain): the
            # tilt settles on the average specific force of the first strides
            ramp = np.clip(1.0 - since / cfg.settle_s, 0.0, 1.0)
            filt.gain = np.where(settling, base + (high - base) * np.nan_to_num(ramp), base)
        else:
            filt.gain = np.full(mask.shape, base)
        # standing still before calibration: the accelerometers see gravity alone, and the
        # calibration takes every sensor's tilt from this stand, so the filters trust it fully
        levelling = [k for k, st in enumerate(states) if st.calibration is None and st.standing]
        if levelling:
            filt.gain[levelling] = high
        # after a bridged burst of losses, a quiet tick whose gravity is far from the filter's
        # tilt re-levels that sensor: the bridge can tilt a swinging foot by tens of degrees
        for k in np.flatnonzero(bridged.any(axis=1)):
            states[k].relevel_until[bridged[k]] = t[k] + cfg.relevel_s
        check = mask & (np.stack([st.relevel_until for st in states]) > t[:, None])
        if check.any():
            up = quat_to_matrix(filt.q)[..., 2, :]  # the filter's vertical, sensor frame
            f = np.linalg.norm(acc, axis=-1)
            off = np.sum(up * acc, axis=-1) < f * np.cos(np.radians(cfg.relevel_deg))
            filt.gain = np.where(check & self._quiet(gyr, acc) & off, high, filt.gain)

    # -- gyro bias and leg headings after calibration -------------------------------------------
    def _after_stands(
        self,
        st: _SubjectState,
        t: float,
        gyr: np.ndarray,
        acc: np.ndarray,
        q: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        """Collect a still streak; when it ends, fold its bias estimate into the running one
        and reset the leg headings from it (`_stand_heading`).

        The stand is cut as for calibration (its first settle_guard_s and last onset_guard_s
        are the end of a stop and the onset of a walk), and `standing_estimates` takes the
        sway the accelerometers saw out of it. A gap in the ticks ends the streak unused.
        """
        cfg = self.config
        still = self._is_still(gyr, acc, mask)
        if still:
            judge = mask & _STILL_JUDGES
            turn = np.linalg.norm(gyr[judge] - st.bias[judge], axis=-1)
            still = bool((turn < cfg.bias_still_gyr).all())
        if st.rest and t - st.rest[-1][0] > cfg.capture_gap_s:
            st.rest.clear()
        if still:
            g = np.where(mask[:, None], gyr, np.nan)
            a = np.where(mask[:, None], acc, np.nan)
            st.rest.append((t, g, a, q.copy()))
            return
        if still is None or not st.rest:
            return
        streak = list(st.rest)
        st.rest.clear()
        stand, _ = self._stand_of(streak)
        if not stand or stand[-1][0] - stand[0][0] + 1.0 / cfg.rate < cfg.standing_s - 1e-9:
            return
        if cfg.bias_memory_s > 0:
            self._fold_bias(st, stand)
        if cfg.stand_heading_deg > 0:
            self._stand_heading(st, t, stand)

    def _fold_bias(self, st: _SubjectState, stand: list[tuple[Any, ...]]) -> None:
        """Fold a stand's gyro-bias estimate into the running one: weighted by each
        sensor's standing seconds, the weight capped at bias_memory_s."""
        cfg = self.config
        _, sg, sa = _stand_grid(stand, cfg.rate)
        _, bias, _ = standing_estimates(sg, sa, 1.0 / cfg.rate)
        w = np.isfinite(sg).all(axis=-1).sum(axis=0) / cfg.rate  # seconds each sensor had
        ok = np.isfinite(bias).all(axis=-1) & (w > 0)
        total = st.bias_s + w
        mixed = st.bias_s[:, None] * np.nan_to_num(st.bias) + w[:, None] * np.nan_to_num(bias)
        st.bias = np.where(ok[:, None], mixed / np.where(total > 0, total, 1.0)[:, None], st.bias)
        st.bias_s = np.where(ok, np.minimum(total, cfg.bias_memory_s), st.bias_s)

    def _stand_heading(self, st: _SubjectState, t: float, stand: list[tuple[Any, ...]]) -> None:
        """Queue, for tick `t`, the ψ shifts that set each leg segment's mean yaw relative to
        its reference (the pelvis) over this stand back to the assumed stance's, as the
        calibration set it. Segments off by more than stand_heading_deg, tilted otherwise
        than in the stance, or seen for less than half the stand are left as they are."""
        cfg = self.config
        cal = st.calibration
        assert cal is not None
        R = cal.segment_rotations(np.stack([r[3] for r in stand]))
        seen = np.stack([np.isfinite(r[1]).all(axis=-1) for r in stand])
        healthy = seen & cal.ok[None] & ~st.lost[None]
        yaw = _yaw(R)
        ref = self._reference_yaw(yaw, healthy)
        use = healthy & np.isfinite(ref)
        rel = np.where(use, np.exp(1j * np.where(use, yaw - ref, 0.0)), 0.0).sum(axis=0)
        R0 = self._R_stance
        shift = _wrap(self._stance_relative_yaw(cal.ok) - np.angle(rel))
        # the world's vertical in each segment's frame, over the stand and in the stance
        up = np.where(use[..., None], R[..., 2, :], 0.0).sum(axis=0)
        up /= np.maximum(np.linalg.norm(up, axis=-1, keepdims=True), 1e-12)
        tilt = np.arccos(np.clip(np.sum(up * R0[:, 2, :], axis=-1), -1.0, 1.0))
        fix = (
            _STAND_HEADING
            & (use.sum(axis=0) >= 0.5 * len(stand))
            & np.isfinite(shift)
            & (np.abs(shift) <= np.radians(cfg.stand_heading_deg))
            & (tilt <= np.radians(cfg.stand_tilt_deg))
        )
        if fix.any():
            st.yaw_shifts.append((t, np.where(fix, shift, 0.0)))

    def _apply_yaw_shifts(self, st: _SubjectState, t: float) -> None:
        """Apply the queued heading resets due by tick `t` (the relative-yaw memory turns
        with its segment). Resets are queued only once calibrated, and a calibration
        clears the queue."""
        while st.yaw_shifts and st.yaw_shifts[0][0] <= t + 1e-9:
            _, shift = st.yaw_shifts.pop(0)
            assert st.calibration is not None
            st.calibration.earth_yaw[:] = _wrap(st.calibration.earth_yaw + shift)
            st.rel_mean = st.rel_mean * np.exp(1j * shift)

    def _stance_relative_yaw(self, ok: np.ndarray) -> np.ndarray:
        """(13,) each segment's yaw relative to its reference in the assumed stance: what
        the calibration sets and every stand's heading reset restores."""
        R0 = self._R_stance
        return _yaw(R0) - self._reference_yaw(_yaw(R0)[None], ok[None])[0]

    def _stand_of(self, streak: list[tuple[Any, ...]]) -> tuple[list[tuple[Any, ...]], float]:
        """The stand in a still streak of (t, …) rows, and where it ends: all but its first
        settle_guard_s (the end of a stop) and its last onset_guard_s, which may already hold
        the gentle onset of a walk."""
        cfg = self.config
        t_begin = streak[0][0] + cfg.settle_guard_s
        t_end = streak[-1][0] - cfg.onset_guard_s
        return [r for r in streak if t_begin - 1e-9 <= r[0] <= t_end + 1e-9], t_end

    # -- calibration capture --------------------------------------------------------------------
    def _restart_capture(self, st: _SubjectState) -> None:
        st.buffer.clear()
        st.still_since = np.nan
        st.stand = None
        st.walk = []

    def _is_still(self, gyr: np.ndarray, acc: np.ndarray, mask: np.ndarray) -> bool | None:
        """Still (True), moving (False) or unknown (None: no trunk or leg sensor present)."""
        judge = mask & _STILL_JUDGES  # head and arms may move while the body stands
        if not judge.any():
            return None
        return bool(self._quiet(gyr[judge], acc[judge]).all())

    def _quiet(self, gyr: np.ndarray, acc: np.ndarray) -> np.ndarray:
        """Per sensor (…, 3 → …): turning slower than still_gyr and its specific force within
        still_acc of g, so what the accelerometer sees is gravity."""
        cfg = self.config
        with np.errstate(invalid="ignore"):  # a missing sample (NaN) is not quiet
            w = np.linalg.norm(gyr, axis=-1)
            f = np.abs(np.linalg.norm(acc, axis=-1) - GRAVITY)
            return (w < cfg.still_gyr) & (f < cfg.still_acc)

    def _capture(
        self,
        st: _SubjectState,
        t: float,
        gyr: np.ndarray,
        acc: np.ndarray,
        q: np.ndarray,
        mask: np.ndarray,
    ) -> None:
        """Calibration state machine, one tick: the buffer holds the current still streak; a
        streak of ≥ standing_s (+ the onset guard) followed by movement starts the walk;
        standing still that long again during the walk starts over from that standing. Times
        are tick times: dropped ticks do not shorten a stand or a walk."""
        cfg = self.config
        g = np.where(mask[:, None], gyr, np.nan)
        a = np.where(mask[:, None], acc, np.nan)
        still = self._is_still(gyr, acc, mask)
        period = 1.0 / cfg.rate
        if still is None:  # nothing to judge: the streak goes on unless the gap grows long
            if np.isfinite(st.last_judged) and t - st.last_judged > cfg.max_gap_s:
                st.still_since = np.nan
                st.buffer.clear()
            if st.stand is not None:
                st.walk.append((t, g, a))
                self._maybe_finish(st, t)
            return
        if t - st.last_judged > cfg.capture_gap_s:  # NaN (nothing judged yet): no gap
            self._restart_capture(st)  # a calibration is taken from unbroken data only
        st.last_judged = t
        if still:
            if not np.isfinite(st.still_since):
                st.still_since = t
            st.buffer.append((t, g, a, q.copy()))
        # how long the subject has stood still up to this tick (one tick counts 1/rate)
        still_s = t - st.still_since + period if still else 0.0
        if st.stand is None:
            if still:
                st.lost[:] = False  # a restart before this stance does not matter
                st.restart_t[:] = np.nan
                return
            guard = cfg.onset_guard_s
            streak = list(st.buffer)
            st.still_since = np.nan
            st.buffer.clear()
            if not streak or streak[-1][0] - streak[0][0] + period < cfg.standing_s + guard - 1e-9:
                return
            # the ticks of the streak after its stand (the onset guard) belong to the walk
            stand, t_end = self._stand_of(streak)
            onset = [r for r in streak if r[0] > t_end + 1e-9]
            times, sg, sa = _stand_grid(stand, cfg.rate)
            st.stand = (times, sg, sa, stand[-1][3])
            st.walk = [(r[0], r[1], r[2]) for r in onset] + [(t, g, a)]
            st.walk_start = stand[-1][0] + period
            if cfg.mounting == "nominal":
                self._finish_calibration(st)
                return
            # the filters see bias-free gyros from here on (what calibrate will estimate)
            _, bias, _ = standing_estimates(sg, sa, period)
            st.bias = np.where(np.isfinite(bias), bias, 0.0)
            return
        if still_s >= cfg.standing_s - 1e-9:  # standing again: the next walk starts over
            st.stand = None
            st.walk = []
            return
        st.walk.append((t, g, a))
        if not still:
            st.still_since = np.nan
            st.buffer.clear()
        self._maybe_finish(st, t)

    def _maybe_finish(self, st: _SubjectState, t: float) -> None:
        cfg = self.config
        if t - st.walk_start + 1.0 / cfg.rate >= cfg.walking_s - 1e-9:
            self._finish_calibration(st)

    def _finish_calibration(self, st: _SubjectState) -> None:
        """Calibrate from the captured stand + walk (on the tick grid)."""
        cfg = self.config
        assert st.stand is not None
        _, sg, sa, q_stand = st.stand
        if cfg.mounting == "nominal":
            cal = _nominal_calibration(sg, sa, q_stand, self._R_stance)
        else:
            wt = np.array([w[0] for w in st.walk])
            wg, wa = _gridded(
                wt,
                [np.stack([w[1] for w in st.walk]), np.stack([w[2] for w in st.walk])],
                st.walk_start,
                cfg.rate,
            )
            cal = calibrate(sg, sa, q_stand, wg, wa, 1.0 / cfg.rate, cfg.calibration)
        st.calib_notes = cal.notes
        self._restart_capture(st)
        if not cal.ok[SEGMENT_INDEX["pelvis"]]:
            st.bias = np.zeros_like(st.bias)
            return  # no usable heading: wait for the next stand + walk
        st.calibration = cal
        # the filters ran on these gyros during the walk already (the same estimate)
        st.bias = cal.gyro_bias.copy()
        had = np.isfinite(sg).all(axis=-1).sum(axis=0) / cfg.rate  # its stand, per sensor
        st.bias_s = np.where(np.isfinite(cal.gyro_bias).all(axis=-1), had, 0.0)
        st.rest.clear()
        st.yaw_shifts = []
        # the relative-yaw memory starts from the assumed stance (a toed-out foot, …)
        st.rel_mean = np.exp(1j * self._stance_relative_yaw(cal.ok))
        st.rel_mean = np.where(np.isfinite(st.rel_mean), st.rel_mean, 0.0)
        # sensors whose filter restarted during the walk (a long gap) re-acquire their heading
        st.lost &= cal.ok

    # -- segment orientations, heading, re-acquisition -----------------------------------------
    def _segments(
        self,
        st: _SubjectState,
        t: np.ndarray,
        q: np.ndarray,
        mask: np.ndarray,
        start: int,
        fresh: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Segment rotations, availability and heading for the batch's ticks; ticks before
        `start` (not yet calibrated) and ticks that are not fresh are unavailable."""
        cfg = self.config
        m, n = mask.shape
        cal = st.calibration
        R = np.full((m, n, 3, 3), np.nan)
        healthy = np.zeros((m, n), bool)
        heading = np.zeros(m)
        if cal is None or start >= m:
            return R, healthy, heading
        idx = np.flatnonzero(fresh[start:]) + start
        if not len(idx):
            return R, healthy, heading
        tt, qq, mm = t[idx], q[idx], mask[idx]
        if st.lost.any() or st.yaw_shifts:
            # re-acquisition and a stand's heading reset change ψ at one tick: tick by tick,
            # so that the batch's cut does not matter
            Rs = np.empty((len(idx), n, 3, 3))
            for j in range(len(idx)):
                self._apply_yaw_shifts(st, float(tt[j]))
                Rj = cal.segment_rotations(qq[j : j + 1])
                if st.lost.any() and self._reacquire(st, tt[j : j + 1], _yaw(Rj), mm[j : j + 1]):
                    Rj = cal.segment_rotations(qq[j : j + 1])
                Rs[j] = Rj[0]
                healthy[idx[j]] = cal.ok & mm[j] & ~st.lost
        else:
            Rs = cal.segment_rotations(qq)
            healthy[idx] = cal.ok[None] & mm
        R[idx] = Rs
        hh = healthy[idx]
        yaw = _yaw(Rs)  # NaN for segments not calibrated
        # the relative-yaw memory of healthy segments
        ref_yaw = self._reference_yaw(yaw, hh)
        rel = np.exp(1j * (yaw - ref_yaw))
        use = hh & np.isfinite(ref_yaw)
        alpha = 1.0 - np.exp(-1.0 / (cfg.relative_tau_s * cfg.rate))
        for i in range(len(idx)):  # a scalar recursion per tick (13 complex numbers)
            u = use[i]
            st.rel_mean[u] += alpha * (rel[i, u] - st.rel_mean[u])
        p = SEGMENT_INDEX["pelvis"]
        heading[idx] = st.heading(yaw[:, p], hh[:, p])
        return R, healthy, heading

    def _segments_one_tick(
        self, states: list[_SubjectState], q: np.ndarray, mask: np.ndarray
    ) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """`_segments` for K subjects with one fresh tick each, calibrated before it and with
        no sensor lost, in one pass: q (K, 13, 4), mask (K, 13). The same arithmetic as one
        `_segments` call per subject (tests/test_classical_vectorised.py)."""
        if not states:
            return []
        cfg = self.config
        for st in states:  # a reset queued by this tick (the one tick) applies to it
            self._apply_yaw_shifts(st, np.inf)
        cals = [st.calibration for st in states]
        assert all(cal is not None for cal in cals)
        ok = np.stack([cal.ok for cal in cals])  # type: ignore[union-attr]
        ey = np.stack([cal.earth_yaw for cal in cals])  # type: ignore[union-attr]
        cy, sy = np.cos(ey), np.sin(ey)
        Y = np.zeros((*ey.shape, 3, 3))
        Y[..., 0, 0], Y[..., 0, 1], Y[..., 1, 0], Y[..., 1, 1], Y[..., 2, 2] = cy, -sy, sy, cy, 1.0
        mounting = np.stack([cal.mounting for cal in cals])  # type: ignore[union-attr]
        R = np.einsum("bsij,bsjk,bslk->bsil", Y, quat_to_matrix(q), mounting)
        R[~ok] = np.nan
        healthy = ok & mask
        yaw = _yaw(R)
        ref_yaw = self._reference_yaw(yaw, healthy)
        rel = np.exp(1j * (yaw - ref_yaw))
        use = healthy & np.isfinite(ref_yaw)
        alpha = 1.0 - np.exp(-1.0 / (cfg.relative_tau_s * cfg.rate))
        mean = np.stack([st.rel_mean for st in states])
        mean = np.where(use, mean + alpha * (rel - mean), mean)
        p = SEGMENT_INDEX["pelvis"]
        heading = heading_step_many([st.heading for st in states], yaw[:, p], healthy[:, p])
        out = []
        for j, st in enumerate(states):
            st.rel_mean = mean[j].copy()
            out.append((R[j : j + 1], healthy[j : j + 1], heading[j : j + 1]))
        return out

    def _reference_yaw(self, yaw: np.ndarray, healthy: np.ndarray) -> np.ndarray:
        """(m, 13) circular mean yaw of each segment's healthy reference segments."""
        z = np.where(healthy, np.exp(1j * np.where(np.isfinite(yaw), yaw, 0.0)), 0.0)
        zr = z @ _REF_MATRIX.T
        with np.errstate(invalid="ignore"):
            return np.where(np.abs(zr) > 1e-9, np.angle(zr), np.nan)

    def _reacquire(
        self, st: _SubjectState, t: np.ndarray, yaw: np.ndarray, mask: np.ndarray
    ) -> bool:
        """Accumulate the lost sensors' yaw relative to their references over these ticks;
        True when a sensor's heading was re-acquired (ψ changed)."""
        cfg = self.config
        cal = st.calibration
        if cal is None or not st.lost.any():
            return False
        healthy = cal.ok[None] & mask & ~st.lost[None]
        ref = self._reference_yaw(yaw, healthy)
        settled = np.isfinite(st.restart_t)[None] & (
            t[:, None] - st.restart_t[None] >= cfg.settle_s
        )
        use = st.lost[None] & mask & settled & np.isfinite(ref) & np.isfinite(yaw)
        if not use.any():
            return False
        st.reacq_sum += np.where(use, np.exp(1j * (yaw - ref)), 0.0).sum(axis=0)
        st.reacq_n += use.sum(axis=0)
        done = st.lost & (st.reacq_n >= cfg.reacquire_s * cfg.rate)
        if not done.any():
            return False
        # choose ψ so the segment's mean yaw relative to its reference is what it was
        shift = np.angle(st.rel_mean[done]) - np.angle(st.reacq_sum[done])
        cal.earth_yaw[done] = _wrap(cal.earth_yaw[done] + shift)
        st.lost[done] = False
        st.restart_t[done] = np.nan
        return True


def _nominal_calibration(
    sg: np.ndarray, sa: np.ndarray, q_stand: np.ndarray, R0: np.ndarray
) -> Calibration:
    """Mounting assumed = identity; heading ψ from the assumed stance; bias from standing."""
    n = len(SEGMENTS)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a sensor never seen: NaN rows
        bias = np.nanmean(sg, axis=0)
        g = np.nanmean(np.linalg.norm(sa, axis=-1), axis=0)
    ok = np.isfinite(bias).all(axis=1) & np.isfinite(q_stand).all(axis=1)
    R = quat_to_matrix(np.where(np.isfinite(q_stand), q_stand, (1.0, 0, 0, 0)))
    D = np.einsum("sij,skj->sik", R0, R)  # R0 · I · R_standᵀ
    return Calibration(
        mounting=np.tile(np.eye(3), (n, 1, 1)),
        earth_yaw=_yaw(D),
        gyro_bias=np.where(np.isfinite(bias), bias, 0.0),
        gravity=np.where(np.isfinite(g), g, GRAVITY),
        ok=ok,
        notes={s: "nominal mounting" for s in SEGMENTS},
    )
