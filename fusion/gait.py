"""The live gait stage: gait events and per-stride clinical parameters from a stream of joint
angles (and, where worn, foot gyroscopes).

Events (GAIT_EVENTS), per foot, from the best source available in the current buffer:

- foot IMU (the standard method: Salarian et al. 2004, IEEE TBME 51:1434; the gyroscope part of
  Rampp et al. 2015 as in gaitmap): the angular velocity about the foot's medio-lateral axis,
  signed so that the swing is positive ("gyr_ml"), has one large positive peak per stride in
  mid-swing. Toe off is the negative minimum that precedes it. Heel strike is marked by the
  negative minimum that follows it; we state it where the signal crosses zero on its way down
  to that minimum (the end of the swing's toes-up rotation, when the heel lands): on gaitmap's
  labelled recording (204.8 Hz) that is +2…+5 ms from the labelled initial contacts, where
  the minimum itself is +45 ms late (the foot is already slapping down); the minimum stays
  available as `heel_strike_at="minimum"`. The medio-lateral axis is the principal axis of the foot gyro
  (its dominant rotation axis in walking), signed to agree with the sensor's −y axis, i.e. it
  assumes a sensor mounted with x roughly forward, y left, z up on the foot (the contract's
  and gaitmap's foot sensor frame) to within ±90°; pass `foot_axes` for other mountings.
- joint angles only (no foot IMU, or it dropped out): the coordinate method of Zeni et al.
  (2008, Gait Posture 27:710) on the body model: forward kinematics of the estimated angles
  puts the heels and toes in the pelvis-centred progression frame; heel strike is the heel's
  most forward excursion, toe off the toe's most backward one.

Strides (GAIT_PARAMS, one row per completed stride = heel strike to the same foot's next heel
strike): cadence = 120 / stride time (steps/min); step length = heel-to-heel distance along the
progression direction at the stride's first heel strike (the step that ended there, as in the
generator's labels, fusion/gait_events.py), from forward kinematics of the estimated angles
with the subject's BodyModel; stride length = the two steps inside the stride (contralateral
heel strike, then the closing one; NaN if the contralateral heel strike was missed);
speed = stride length / stride time; knee flexion at
maximum extension = the minimum knee flexion between heel strike and toe off; GDI from the
stride's 9 × 51 kinematic curves (fusion/gdi.py).

Streaming: `update` takes chunks of any length; events are stated once they are final: with
the IMU method when the dip after heel strike is over (≈ 0.1 s after heel strike; the toe off
of the same swing goes out with it), with the joint-angle method `confirm_s` (0.45 s) after
the extremum. Each stride is stated at its closing heel strike.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import NamedTuple

import numpy as np
from scipy.signal import butter, find_peaks, sosfiltfilt

from fusion.body import BodyModel
from fusion.gdi import GdiModel, load_default_model, stride_curves
from fusion.skeleton import ANGLE_INDEX, ANGLES, DOF_INDEX, DOFS, GAIT_PARAMS, SIDES
from fusion.walking import foot_points

__all__ = [
    "GaitConfig",
    "GaitTracker",
    "GaitUpdate",
    "contact_events",
    "gyro_sagittal_events",
    "sagittal_axis",
]

_PARAM = {name: i for i, name in enumerate(GAIT_PARAMS)}
#: published angles that are also DOFs (drive forward kinematics); the rest stay 0
_ANGLE_TO_DOF = np.array([(ANGLE_INDEX[a], DOF_INDEX[a]) for a in ANGLES if a in DOF_INDEX])
_DEFAULT_ML_AXIS = np.array([0.0, -1.0, 0.0])  # sensor −y: positive = toes up (swing)


@dataclass(frozen=True)
class GaitConfig:
    """Detection settings (seconds, rad/s, metres)."""

    buffer_s: float = 6.0  # history kept: ≥ max_stride_s + confirm_s + margin
    max_stride_s: float = 2.5  # longer HS→HS gaps (turns, stops) are not strides
    min_stride_s: float = 0.5
    # foot-IMU method
    min_swing_peak: float = 1.0  # rad/s (57 °/s): slower "swings" are not walking
    min_swing_area: float = 0.35  # rad (20°): toes-up rotation a swing must at least make …
    rel_swing_area: float = 0.2  # … and this fraction of the larger lobes' (90th percentile)
    lobe_floor: float = 0.3  # rad/s: a swing lobe is a run of w above −lobe_floor …
    lobe_gap_s: float = 0.05  # … not ended by a dip this short (s) …
    lobe_gap_floor: float = 1.0  # … that stays above −lobe_gap_floor (rad/s)
    hs_window_s: float = 0.35  # heel strike: searched within this after the swing peak
    # "zero_crossing": where w turns negative after the swing peak (default, see module
    # docstring); "minimum": Salarian's minimum of the dip that follows (≈ 45 ms later on
    # gaitmap's data)
    heel_strike_at: str = "zero_crossing"
    to_window_s: float = 0.3  # toe off: minimum within this before the swing lobe
    # joint-angle (Zeni) method
    heel_prominence_m: float = 0.06  # a heel/toe excursion peak must stand out this much …
    rel_prominence: float = 0.3  # … and this fraction of the recent excursion range
    foot_lowpass_hz: float = 4.0  # zero-phase low-pass of the heel/toe excursions first
    # events
    same_event_gap_s: float = 0.3  # the same label on the same foot twice within this: one
    detect_period_s: float = 0.1  # run detection at most this often (events wait ≤ this)

    @property
    def confirm_s(self) -> float:
        """How long after an extremum the joint-angle method states it (and buffer sizing)."""
        return self.hs_window_s + 0.1


class GaitUpdate(NamedTuple):
    """What one `update` call newly states."""

    events: list[tuple[float, str]]  # (t, label in GAIT_EVENTS), time-ordered
    strides: np.ndarray  # (M, len(GAIT_PARAMS)), GAIT_PARAMS order
    stride_t: np.ndarray  # (M,) time of each stride's closing heel strike (s)


def sagittal_axis(gyro: np.ndarray, prior: np.ndarray = _DEFAULT_ML_AXIS) -> np.ndarray:
    """The foot's medio-lateral rotation axis in the sensor frame from gyro samples (N, 3):
    the principal axis of ω ωᵀ, signed to agree with `prior` (default: sensor −y)."""
    g = np.asarray(gyro, float)
    g = g[np.all(np.isfinite(g), axis=1)]
    if len(g) < 10:
        return prior / np.linalg.norm(prior)
    _, vecs = np.linalg.eigh(g.T @ g)
    axis = vecs[:, -1]
    return axis if axis @ prior >= 0 else -axis


def gyro_sagittal_events(
    t: np.ndarray, w: np.ndarray, cfg: GaitConfig = GaitConfig()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Events on one foot's sagittal angular velocity w (N,) rad/s, swing positive.

    The swing is the one large positive rotation of the foot per stride, so swings are found
    as *lobes* (runs of w above −`lobe_floor`, bridging dips shorter than `lobe_gap_s` that stay
    above −`lobe_gap_floor`) whose positive area — the foot's toes-up
    rotation, ≈ 1–1.5 rad in walking — is at least `min_swing_area` and `rel_swing_area` of
    the larger lobes in view, with a peak of at least `min_swing_peak`. Lobe area rather than
    peak height keeps short spikes (a slap at loading response, a stumble) from being taken
    for swings. Per swing: the mid-swing peak (argmax), heel strike at the lobe's last downward
    zero crossing (or the minimum of the dip that follows, `heel_strike_at="minimum"`),
    toe off at the minimum in the `to_window_s` before the swing lobe.

    Returns (peak times, heel strikes, toe offs, confirmation times): NaN where a window is
    cut by the data's edges; an event is final once the data reaches its confirmation time.
    """
    t = np.asarray(t, float)
    w = np.asarray(w, float)
    empty = np.empty(0)
    if len(t) < 5:
        return empty, empty, empty, empty
    dt = np.gradient(t)
    wf = np.where(np.isfinite(w), w, 0.0)
    inside = wf > -cfg.lobe_floor
    edges = np.diff(np.concatenate([[0], inside.astype(np.int8), [0]]))
    starts, stops = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)  # [start, stop)
    if len(starts) == 0:
        return empty, empty, empty, empty
    if len(starts) > 1:  # a brief, shallow dip does not end a swing: merge across it
        bounds = np.column_stack([stops[:-1], starts[1:]]).ravel()
        gap_min = np.minimum.reduceat(wf, bounds)[::2]
        gap_len = t[starts[1:]] - t[stops[:-1] - 1]
        merge = (gap_len <= cfg.lobe_gap_s) & (gap_min > -cfg.lobe_gap_floor)
        starts = starts[np.concatenate([[True], ~merge])]
        stops = stops[np.concatenate([~merge, [True]])]
    area = np.add.reduceat(np.maximum(wf, 0.0) * dt, starts)
    # reduceat sums to the next start; the samples between a stop and the next start are
    # below −lobe_floor and contribute 0, so this is each lobe's positive area
    big = area >= cfg.min_swing_area
    if not big.any():
        return empty, empty, empty, empty
    thr = max(cfg.min_swing_area, cfg.rel_swing_area * np.percentile(area[big], 90))
    keep = np.flatnonzero(area >= thr)
    n = len(t)
    peaks, hs, to, done = [], [], [], []
    for a, b in zip(starts[keep], stops[keep], strict=True):  # per stride, not per sample
        p = a + int(np.argmax(wf[a:b]))
        if wf[p] < cfg.min_swing_peak:
            continue
        h = d = np.nan
        if b < n:  # the lobe is over: w went below −lobe_floor after the heel strike
            # the last downward zero crossing inside the lobe (shallow dips in mid-swing
            # that stay above −lobe_floor are not heel strikes)
            i = a + int(np.flatnonzero((wf[a:b] >= 0.0) & (wf[a + 1 : b + 1] < 0.0))[-1])
            if cfg.heel_strike_at == "minimum":
                hi = int(np.searchsorted(t, t[i] + cfg.hs_window_s, side="right"))
                up = np.flatnonzero(wf[i + 1 : hi] >= 0.0)
                j = i + 1 + int(up[0]) if len(up) else hi  # end of the dip (exclusive)
                if j < n:
                    h = t[i + 1 + int(np.argmin(wf[i + 1 : j]))]
                    d = t[j]
            else:
                h = t[i] + (t[i + 1] - t[i]) * wf[i] / (wf[i] - wf[i + 1])
                d = t[b] + cfg.lobe_gap_s  # final once the dip is too long to be bridged
        lo = int(np.searchsorted(t, t[a] - cfg.to_window_s, side="left"))
        o = t[lo + int(np.argmin(wf[lo : a + 1]))] if lo > 0 and a - lo > 2 else np.nan
        peaks.append(t[p])
        hs.append(h)
        to.append(o)
        done.append(d)
    return np.array(peaks), np.array(hs), np.array(to), np.array(done)


def contact_events(
    t: np.ndarray, vertical_force: np.ndarray, threshold: float = 20.0
) -> tuple[np.ndarray, np.ndarray]:
    """Reference events from one foot's vertical ground reaction force (N): heel strikes where
    it rises through `threshold`, toe offs where it falls through it (linearly interpolated).
    The usual force-plate definition (a 10–50 N threshold) that kinematic methods are scored
    against."""
    t = np.asarray(t, float)
    f = np.nan_to_num(np.asarray(vertical_force, float)) - threshold
    i = np.flatnonzero(np.diff(np.sign(f)) != 0)
    i = i[f[i] != f[i + 1]]
    tc = t[i] + (t[i + 1] - t[i]) * f[i] / (f[i] - f[i + 1])
    rising = f[i + 1] > f[i]
    return tc[rising], tc[~rising]


def _lowpass(t: np.ndarray, x: np.ndarray, cutoff_hz: float) -> np.ndarray:
    """Zero-phase 2nd-order Butterworth low-pass of a buffer (gaps filled linearly first):
    estimated angles carry frame-to-frame noise that would otherwise make spurious extrema."""
    ok = np.isfinite(x)
    x = np.interp(t, t[ok], x[ok]) if not ok.all() else x
    fs = round(1.0 / float(np.median(np.diff(t))), 1)
    if cutoff_hz >= 0.45 * fs or len(x) < 16:
        return x
    return sosfiltfilt(_butter_sos(cutoff_hz, fs), x)


@lru_cache(maxsize=16)
def _butter_sos(cutoff_hz: float, fs: float) -> np.ndarray:
    return butter(2, cutoff_hz, fs=fs, output="sos")


class GaitTracker:
    """One subject's live gait stage (see the module docstring)."""

    def __init__(
        self,
        body: BodyModel | None = None,
        gdi_model: GdiModel | str | None = "default",
        foot_axes: np.ndarray | None = None,
        config: GaitConfig | None = None,
    ) -> None:
        """body: the subject's BodyModel (segment lengths for step length).
        gdi_model: "default" loads the shipped basis; None disables GDI (NaN).
        foot_axes: (2, 3) medio-lateral axis of foot_l, foot_r in their sensor frames, swing
        positive; None estimates it from the data (see `sagittal_axis`)."""
        self.body = body or BodyModel()
        self.gdi_model = load_default_model() if gdi_model == "default" else gdi_model
        self.config = config or GaitConfig()
        if foot_axes is not None:
            foot_axes = np.asarray(foot_axes, float)
            if foot_axes.shape != (2, 3) or not np.all(np.isfinite(foot_axes)):
                raise ValueError(f"foot_axes must be (2, 3) finite, got {foot_axes.shape}")
            foot_axes = foot_axes / np.linalg.norm(foot_axes, axis=1, keepdims=True)
        self.foot_axes = foot_axes
        self.dropped = 0  # samples refused (time not increasing, non-finite time)
        self.reset()

    def reset(self) -> None:
        n_ang = len(ANGLES)
        self._t = np.empty(0)
        self._angles = np.empty((0, n_ang))
        self._gyro = np.empty((0, 2, 3))
        self._feet = np.empty((0, 4))  # heel_x l, heel_x r, toe_x l, toe_x r (m)
        self._feet_todo = 0  # newest rows of _feet not computed yet (FK is batched)
        self._last_detect = -np.inf
        self._gyro_moment = np.zeros((2, 3, 3))
        self._last_event = {s: {"heel_strike": -np.inf, "toe_off": -np.inf} for s in SIDES}
        self._hs: dict[str, list[float]] = {s: [] for s in SIDES}
        self._to: dict[str, list[float]] = {s: [] for s in SIDES}
        self._last_source = {s: "" for s in SIDES}

    # -- input -------------------------------------------------------------------------------
    def update(
        self, t: np.ndarray, angles: np.ndarray, foot_gyro: np.ndarray | None = None
    ) -> GaitUpdate:
        """Feed N new samples: t (N,) s, angles (N, len(ANGLES)) deg (NaN where unknown),
        foot_gyro (N, 2, 3) rad/s of the foot_l, foot_r sensors in their sensor frames (NaN
        where masked) or None. Returns the events and strides confirmed by this chunk."""
        t = np.asarray(t, float).reshape(-1)
        n = len(t)
        angles = np.asarray(angles, float)
        if angles.shape != (n, len(ANGLES)):
            raise ValueError(
                f"GaitTracker.update: angles has shape {angles.shape}, expected ({n}, "
                f"{len(ANGLES)}) = (len(t), len(ANGLES))"
            )
        if foot_gyro is None:
            foot_gyro = np.full((n, 2, 3), np.nan)
        else:
            foot_gyro = np.asarray(foot_gyro, float)
            if foot_gyro.shape != (n, 2, 3):
                raise ValueError(
                    f"GaitTracker.update: foot_gyro has shape {foot_gyro.shape}, expected "
                    f"({n}, 2, 3) = (len(t), [foot_l, foot_r], xyz) in rad/s"
                )
        last = self._t[-1] if len(self._t) else -np.inf
        finite = np.isfinite(t)
        before = np.maximum.accumulate(np.concatenate([[last], np.where(finite, t, -np.inf)]))
        keep = finite & (t > before[:-1])
        if not keep.all():
            self.dropped += int((~keep).sum())
            t, angles, foot_gyro = t[keep], angles[keep], foot_gyro[keep]
        events: list[tuple[float, str]] = []
        strides: list[np.ndarray] = []
        stride_t: list[float] = []
        # long chunks (offline replay) are fed in pieces the buffer can hold
        piece = max(1.0, self.config.buffer_s - self.config.max_stride_s - self.config.confirm_s)
        start = 0
        while start < len(t):
            stop = int(np.searchsorted(t, t[start] + piece, side="left"))
            stop = max(stop, start + 1)
            ev, st, stt = self._step(t[start:stop], angles[start:stop], foot_gyro[start:stop])
            events += ev
            strides += st
            stride_t += stt
            start = stop
        out = np.array(strides, float).reshape(-1, len(GAIT_PARAMS))
        return GaitUpdate(events, out, np.array(stride_t, float))

    def _step(
        self, t: np.ndarray, angles: np.ndarray, gyro: np.ndarray
    ) -> tuple[list[tuple[float, str]], list[np.ndarray], list[float]]:
        self._append(t, angles, gyro)
        cfg = self.config
        if self._t[-1] - self._last_detect < cfg.detect_period_s:
            return [], [], []
        self._last_detect = self._t[-1]
        self._update_feet()
        t_confirm = self._t[-1] - cfg.confirm_s
        candidates: list[tuple[float, str, str]] = []  # (t, side, kind)
        for k, side in enumerate(SIDES):
            candidates += self._detect(k, side, t_confirm)
        candidates.sort()
        events: list[tuple[float, str]] = []
        strides: list[np.ndarray] = []
        stride_t: list[float] = []
        for te, side, kind in candidates:
            if te <= self._last_event[side][kind] + cfg.same_event_gap_s:
                continue
            self._last_event[side][kind] = te
            events.append((te, f"{kind}_{side}"))
            if kind == "toe_off":
                self._to[side].append(te)
            else:
                row = self._close_stride(side, te)
                self._hs[side].append(te)
                if row is not None:
                    strides.append(row)
                    stride_t.append(te)
        horizon = self._t[0] if len(self._t) else -np.inf
        for side in SIDES:  # forget events older than the buffer
            self._hs[side] = [x for x in self._hs[side] if x >= horizon - cfg.max_stride_s]
            self._to[side] = [x for x in self._to[side] if x >= horizon - cfg.max_stride_s]
        return events, strides, stride_t

    def _append(self, t: np.ndarray, angles: np.ndarray, gyro: np.ndarray) -> None:
        feet = np.full((len(t), 4), np.nan)
        self._feet_todo += len(t)
        g = gyro.reshape(-1, 2, 3)
        ok = np.all(np.isfinite(g), axis=2)
        for k in range(2):
            gk = g[ok[:, k], k]
            self._gyro_moment[k] += gk.T @ gk
        self._t = np.concatenate([self._t, t])
        self._angles = np.concatenate([self._angles, angles])
        self._gyro = np.concatenate([self._gyro, gyro])
        self._feet = np.concatenate([self._feet, feet])
        keep = self._t >= self._t[-1] - self.config.buffer_s
        if not keep.all():
            self._t, self._angles = self._t[keep], self._angles[keep]
            self._gyro, self._feet = self._gyro[keep], self._feet[keep]
            self._feet_todo = min(self._feet_todo, len(self._t))

    def _update_feet(self) -> None:
        """Forward kinematics for the rows appended since the last detection (batched)."""
        n = self._feet_todo
        if n:
            self._feet[-n:] = self._foot_positions(self._angles[-n:])
            self._feet_todo = 0

    def _foot_positions(self, angles: np.ndarray) -> np.ndarray:
        """Heel and toe x (progression) relative to the mid-hip point, (N, 4)."""
        n = len(angles)
        out = np.full((n, 4), np.nan)
        if n == 0:
            return out
        dofs = np.zeros((n, len(DOFS)))
        dofs[:, _ANGLE_TO_DOF[:, 1]] = angles[:, _ANGLE_TO_DOF[:, 0]]
        need = [ANGLE_INDEX[a] for a in ANGLES if a.startswith(("pelvis_", "hip_", "knee_"))]
        need += [ANGLE_INDEX[f"ankle_dorsiflexion_{s}"] for s in SIDES]
        ok = np.all(np.isfinite(angles[:, need]), axis=1)
        if not ok.any():
            return out
        # legs-only closed-form forward kinematics (same result as fusion.kinematics')
        feet = foot_points(self.body, np.nan_to_num(dofs[ok]))  # (n, side, heel/toe, xyz)
        out[ok] = feet[:, :, :, 0].transpose(0, 2, 1).reshape(-1, 4)  # heel l, r, toe l, r
        return out

    # -- detection ---------------------------------------------------------------------------
    def _axis(self, k: int) -> np.ndarray:
        if self.foot_axes is not None:
            return self.foot_axes[k]
        M = self._gyro_moment[k]
        if np.trace(M) <= 0:
            return _DEFAULT_ML_AXIS
        _, vecs = np.linalg.eigh(M)
        axis = vecs[:, -1]
        return axis if axis @ _DEFAULT_ML_AXIS >= 0 else -axis

    def _detect(self, k: int, side: str, t_confirm: float) -> list[tuple[float, str, str]]:
        cfg = self.config
        # only the recent part can hold events not stated yet (older ones were confirmed)
        i0 = int(np.searchsorted(self._t, self._t[-1] - cfg.max_stride_s - cfg.confirm_s - 1.0))
        t = self._t[i0:]
        if len(t) < 10:
            return []
        gyro = self._gyro[i0:, k]
        recent = t >= t[-1] - cfg.max_stride_s - cfg.confirm_s
        gyro_ok = np.all(np.isfinite(gyro[recent]), axis=1).mean() > 0.8
        out: list[tuple[float, str, str]] = []
        if gyro_ok:
            self._last_source[side] = "imu"
            w = gyro @ self._axis(k)
            _, hs, to, done = gyro_sagittal_events(t, w, cfg)
            for h, o, d in zip(hs, to, done, strict=True):
                if not (np.isfinite(h) and d <= t[-1]):
                    continue  # the heel strike is not final yet: state both events together
                out.append((float(h), side, "heel_strike"))
                if np.isfinite(o):
                    out.append((float(o), side, "toe_off"))
            return out
        heel = self._feet[i0:, k]
        toe = self._feet[i0:, 2 + k]
        if np.isfinite(heel).mean() < 0.8:
            return out
        self._last_source[side] = "angles"
        dt = float(np.median(np.diff(t)))
        dist = max(1, round(0.9 * cfg.min_stride_s / dt))
        for sig, kind in ((heel, "heel_strike"), (-toe, "toe_off")):
            s = _lowpass(t, sig, cfg.foot_lowpass_hz)
            span = float(np.ptp(s))  # low-passed: no single-sample outliers left
            prominence = max(cfg.heel_prominence_m, cfg.rel_prominence * span)
            peaks, _ = find_peaks(s, distance=dist, prominence=prominence)
            for p in peaks:
                if t[p] <= t_confirm:
                    out.append((float(t[p]), side, kind))
        return out

    # -- strides -----------------------------------------------------------------------------
    def _close_stride(self, side: str, t_hs: float) -> np.ndarray | None:
        cfg = self.config
        prev = [x for x in self._hs[side] if x < t_hs]
        if not prev:
            return None
        t0 = prev[-1]
        T = t_hs - t0
        if not cfg.min_stride_s <= T <= cfg.max_stride_s:
            return None
        other = SIDES[1 - SIDES.index(side)]
        row = np.full(len(GAIT_PARAMS), np.nan)
        row[_PARAM["side"]] = float(SIDES.index(side))
        row[_PARAM["stride_time"]] = T
        row[_PARAM["cadence"]] = 120.0 / T
        row[_PARAM["step_length"]] = self._step_length(side, t0)
        contra = [x for x in self._hs[other] if t0 < x < t_hs]
        if contra:
            stride = self._step_length(other, contra[-1]) + self._step_length(side, t_hs)
            row[_PARAM["stride_length"]] = stride
            row[_PARAM["speed"]] = stride / T
        tos = [x for x in self._to[side] if t0 < x < t_hs]
        stance_end = tos[0] if tos else t0 + 0.6 * T
        sel = (self._t >= t0) & (self._t <= stance_end)
        knee = self._angles[sel, ANGLE_INDEX[f"knee_flexion_{side}"]]
        if np.isfinite(knee).any():
            row[_PARAM["knee_flexion_max_ext"]] = float(np.nanmin(knee))
        if self.gdi_model is not None:
            curves = stride_curves(self._t, self._angles, t0, t_hs, side)
            if np.all(np.isfinite(curves)):
                row[_PARAM["gdi"]] = float(self.gdi_model.gdi(curves))
        return row

    def _step_length(self, side: str, t_hs: float) -> float:
        """Heel-to-heel distance along progression at this heel strike (leading − trailing)."""
        k = SIDES.index(side)
        heel = self._feet[:, [k, 1 - k]]
        ok = np.all(np.isfinite(heel), axis=1)
        if ok.sum() < 2 or not self._t[ok][0] <= t_hs <= self._t[ok][-1]:
            return float("nan")
        lead = np.interp(t_hs, self._t[ok], heel[ok, 0])
        trail = np.interp(t_hs, self._t[ok], heel[ok, 1])
        return float(lead - trail)

    @property
    def event_source(self) -> dict[str, str]:
        """Per side: "imu", "angles" or "" (none yet) — what the last detection used."""
        return dict(self._last_source)
