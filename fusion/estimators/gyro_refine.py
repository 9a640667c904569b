"""Gyro refinement: a neural model's segment rotations, steadied by the IMUs' own gyros.

Why: a neural model sees one window (1 s) at a time, so each tick re-estimates every segment's
orientation, and its error wanders from window to window (a slow error, not jitter: on the
evaluation's main set FusionNet's knee-flexion error is 3.6° RMS within a clip, of which only
0.6° is above 6 Hz). A gyro measures how a segment turned between two ticks far better than
that. So a complementary filter, per segment, relative to the pelvis: the rotation of each
segment in the pelvis frame is carried forward by both sensors' gyros and pulled towards the
model's answer with time constant `tau_s`. Errors slower than `tau_s` are the model's,
faster ones the gyro's. Relative to the pelvis because the models answer in a heading-free
frame that turns with the subject, where the gyros do not (joint angles are relative anyway;
the pelvis itself stays the model's).

What the filter needs to know it learns from the model, never from a calibration pose:
- each sensor's mounting M (sensor axes in the segment) is the rotation that best maps the
  gyro-integrated turn of the sensor over `span` ticks onto the model's turn of the segment
  over the same ticks (`fusion.orientation.best_rotation`, accumulated over the whole stream:
  a mounting does not move);
- each gyro's bias is the integral term of the filter (Mahony-style): the correction the model
  keeps asking for, turned into the sensor frame.
Until a sensor has `warm_s` of fitted turns its segment is the model's answer unchanged; a gap
in its samples (or the pelvis's), a tick interval over `max_gap_s`, or a disagreement over
`reset_deg` puts the segment back on the model's answer (the fit and the bias are kept). Only
the `segments` (the legs) are refined, and none while the subject turns (`_span_end`).

Vectorised over subjects × segments, one step per tick: `GyroRefiner.step` takes the ticks of
any set of subjects, each subject's ticks in time order. It costs ~0.2 ms a tick for 4
subjects on its own, ~0.5 ms inside the live estimator's call, which is why `NeuralEstimator`
runs it only when asked (`gyro_refine`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fusion.orientation import best_rotation, matrix_to_rotvec, rotvec_to_matrix
from fusion.skeleton import LEG_SEGMENTS, SEGMENT_INDEX, SEGMENTS

__all__ = ["GyroRefineConfig", "GyroRefiner"]

_P = SEGMENT_INDEX["pelvis"]
_EYE = np.eye(3)
#: the nominal mounting (sensor axes = segment axes) as a prior worth a few small turns: it
#: settles the axes a sensor has not turned about yet, where the fit alone is arbitrary
_PRIOR = 1e-3 * np.eye(3)
#: a subject turning faster than this (rad/s about the vertical, low-passed over _TURN_TAU_S
#: so that the pelvis's ±5° swing with each stride stays below it) adds nothing to the fits
#: and has no segment refined
_TURNING = np.radians(15.0)
_TURN_TAU_S = 0.5
_MIN_TURN = np.radians(2.0)  # rad over `span` ticks: slower turns do not fit a mounting


@dataclass(frozen=True)
class GyroRefineConfig:
    """The filter's settings (evaluated in docs/evaluation.md, "Gyro refinement")."""

    tau_s: float = 0.5  # complementary time constant: slower errors are the model's
    bias_gain: float = 0.1  # 1/s: integral gain of the gyro-bias estimate
    span: int = 10  # ticks over which the sensor's and the model's turns are compared
    warm_s: float = 3.0  # seconds of compared turns before a segment is refined
    max_gap_s: float = 0.1  # a longer tick interval restarts every segment from the model
    reset_deg: float = 30.0  # a larger disagreement restarts the segment from the model
    #: the segments refined. The legs: there the models' answers wander (lower-limb RMSE
    #: 3.7° for FusionNet). Their upper limbs are within 1° already, and the arms turn about
    #: one axis only while walking, which leaves their mountings half-fitted (shoulder
    #: rotation 0.13° → 1.26° on a turn clip when they were refined too).
    segments: tuple[str, ...] = LEG_SEGMENTS

    def __post_init__(self) -> None:
        for name in ("tau_s", "warm_s", "max_gap_s", "reset_deg"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v > 0):
                raise ValueError(f"GyroRefineConfig.{name}={v!r}: must be a positive number")
        if not (np.isfinite(self.bias_gain) and self.bias_gain >= 0):
            raise ValueError(f"GyroRefineConfig.bias_gain={self.bias_gain!r}: must be >= 0")
        if int(self.span) != self.span or self.span < 1:
            raise ValueError(f"GyroRefineConfig.span={self.span!r}: must be an integer >= 1")
        unknown = sorted(set(self.segments) - set(SEGMENTS) | ({"pelvis"} & set(self.segments)))
        if unknown:
            raise ValueError(
                f"GyroRefineConfig.segments: {unknown} (the pelvis stays the model's; the "
                f"others are {[x for x in SEGMENTS if x != 'pelvis']})"
            )

    @property
    def mask(self) -> np.ndarray:
        """(13,) bool: the segments refined."""
        return np.isin(np.array(SEGMENTS), list(self.segments))


class _State:
    """Every subject's filter state as rows of arrays (row = subject), over the segments the
    filter tracks: the pelvis first, then the refined ones."""

    def __init__(self, n_seg: int) -> None:
        self.n_seg = n_seg
        self.rows: dict[str, int] = {}
        self.free: list[int] = []
        self.a: dict[str, np.ndarray] = {}
        self._grow(0)

    def _blank(self, n: int) -> dict[str, np.ndarray]:
        eye = np.broadcast_to(_EYE, (n, self.n_seg, 3, 3))
        return {
            "t": np.full(n, np.nan),  # last tick's time
            "gyro": np.full((n, self.n_seg, 3), np.nan),  # last tick's gyro (rad/s)
            "pelvis": np.broadcast_to(_EYE, (n, 3, 3)).copy(),  # last model pelvis rotation
            "Q": eye.copy(),  # segment in the pelvis frame (the filter's estimate)
            "G": eye.copy(),  # the sensor's gyro-integrated turn since the span began
            "gap": np.ones((n, self.n_seg), bool),  # a sample missing since the span began
            "anchor": eye.copy(),  # the model's rotation where the span began
            "t_anchor": np.full(n, np.nan),  # when the span began
            "H": np.zeros((n, self.n_seg, 3, 3)),  # Σ model turn · sensor turnᵀ
            "M": eye.copy(),  # mounting: sensor axes in the segment
            "fit_s": np.zeros((n, self.n_seg)),  # seconds of compared turns
            "bias": np.zeros((n, self.n_seg, 3)),  # gyro bias (rad/s, sensor frame)
            "yaw_rate": np.zeros(n),  # the pelvis's turn about the vertical, low-passed
            "ticks": np.zeros(n, int),
        }

    def _grow(self, n: int) -> None:
        new = self._blank(n)
        self.a = {k: np.concatenate([self.a[k], v]) if self.a else v for k, v in new.items()}

    def row(self, subject: str) -> int:
        if subject not in self.rows:
            if not self.free:
                n = len(self.a["t"])
                self._grow(max(4, n))
                self.free = list(range(n, len(self.a["t"])))
            self.rows[subject] = self.free.pop(0)
        return self.rows[subject]

    def clear(self, subject: str) -> None:
        r = self.rows.pop(subject, None)
        if r is not None:
            for k, v in self._blank(1).items():
                self.a[k][r] = v[0]
            self.free.append(r)


class GyroRefiner:
    """The filter for many subjects; see the module docstring."""

    def __init__(self, config: GyroRefineConfig | None = None) -> None:
        self.cfg = config or GyroRefineConfig()
        #: the segments tracked (pelvis first, then the refined), as indices into SEGMENTS
        self._seg = np.array([_P, *np.flatnonzero(self.cfg.mask)])
        self._st = _State(len(self._seg))

    def reset(self, subject: str | None = None) -> None:
        for s in [subject] if subject is not None else list(self._st.rows):
            self._st.clear(s)

    def mounting(self, subject: str) -> dict[str, np.ndarray]:
        """The mountings (sensor axes in the segment) fitted so far for `subject`."""
        M = self._st.a["M"][self._st.rows[subject]]
        return {SEGMENTS[j]: M[k].copy() for k, j in enumerate(self._seg)}

    def step(
        self, subjects: list[str], t: np.ndarray, rot: np.ndarray, gyro: np.ndarray
    ) -> np.ndarray:
        """One tick of `subjects` (distinct): tick times t (n,), the model's heading-free
        segment rotations rot (n, 13, 3, 3), gyro (n, 13, 3) rad/s in the sensor frames
        (non-finite = missing) → refined rotations (n, 13, 3, 3)."""
        rows = np.array([self._st.row(s) for s in subjects], int)
        # the usual call has every subject in row order: index with a slice (views, no copies)
        sel: slice | np.ndarray = rows
        if len(rows) and (rows == np.arange(rows[0], rows[0] + len(rows))).all():
            sel = slice(int(rows[0]), int(rows[0]) + len(rows))
        a, cfg = self._st.a, self.cfg
        rot = np.asarray(rot, float)
        t = np.asarray(t, float)
        R = rot[:, self._seg]  # the tracked segments; [:, 0] is the pelvis
        g = np.asarray(gyro, float)[:, self._seg]
        dt = t - a["t"][sel]
        cont = np.isfinite(dt) & (dt > 0) & (dt <= cfg.max_gap_s)
        dt = np.where(cont, dt, 0.0)
        ok = np.isfinite(g).all(-1) & np.isfinite(a["gyro"][sel]).all(-1) & cont[:, None]
        # the sensor's turn over the tick (midpoint rate: the gyro samples are the ticks')
        w = np.where(ok[..., None], 0.5 * (g + a["gyro"][sel]) - a["bias"][sel], 0.0)
        dS = rotvec_to_matrix(w * dt[:, None, None])
        a["G"][sel] = a["G"][sel] @ dS
        a["gap"][sel] |= ~ok
        M = a["M"][sel]
        # carry Q (segment in the pelvis frame) by both gyros: Q ← dPᵀ Q dSeg
        dSeg = M @ dS @ np.swapaxes(M, -1, -2)
        dP = np.where(
            ok[:, :1, None, None],
            dSeg[:, :1],
            np.swapaxes(a["pelvis"][sel], -1, -2)[:, None] @ R[:, :1],
        )
        Qp = np.swapaxes(dP, -1, -2) @ a["Q"][sel] @ dSeg
        Qn = np.swapaxes(R[:, :1], -1, -2) @ R
        err = matrix_to_rotvec(np.swapaxes(Qp, -1, -2) @ Qn)
        keep = ok & (a["fit_s"][sel] >= cfg.warm_s)
        keep &= (np.abs(a["yaw_rate"][sel]) <= _TURNING)[:, None]  # see _span_end
        keep &= (err * err).sum(-1) <= np.radians(cfg.reset_deg) ** 2
        keep[:, 0] = False  # the pelvis stays the model's
        k = (dt / cfg.tau_s)[:, None, None]
        a["Q"][sel] = np.where(keep[..., None, None], Qp @ rotvec_to_matrix(err * k), Qn)
        # the integral term: the correction asked for, in the sensor frame, is bias
        ask = np.einsum("nsji,nsj->nsi", M, err) * (cfg.bias_gain * dt)[:, None, None]
        a["bias"][sel] -= np.where(keep[..., None], ask, 0.0)
        a["gyro"][sel] = g
        a["t"][sel] = np.where(np.isfinite(t), t, a["t"][sel])
        a["pelvis"][sel] = R[:, 0]
        a["ticks"][sel] += 1
        ends = a["ticks"][rows] % cfg.span == 0
        if ends.any():
            self._span_end(rows[ends], R[ends], t[ends])
        out = rot.copy()
        # a segment not refined this tick is the model's answer, bit for bit
        out[:, self._seg] = np.where(keep[..., None, None], R[:, :1] @ a["Q"][sel], R)
        return out

    def _span_end(self, rows: np.ndarray, R: np.ndarray, t: np.ndarray) -> None:
        """Every `span` ticks: compare each sensor's turn over the span (if it lost no sample)
        with the model's turn of its segment, add that to the fit, refit the mountings, and
        update the subject's turning rate; then begin the next span.

        Turning: while the subject turns, the model's heading-free frame turns with it and
        the gyros do not, so its turns fit no mounting; and a turn about the vertical carried
        through a mounting fitted to walking (where the pelvis and arms turn little about
        some axes) tilts segments by degrees (turn clips, upper limbs: 0.5° → 3.1°), so no
        segment is refined while the low-passed turning rate is over _TURNING."""
        a = self._st.a
        G, M = a["G"][rows], a["M"][rows]
        turn_G = matrix_to_rotvec(G)
        turn_net = matrix_to_rotvec(np.swapaxes(a["anchor"][rows], -1, -2) @ R)
        span_s = t - a["t_anchor"][rows]
        whole = ~a["gap"][rows] & np.isfinite(span_s)[:, None]
        if whole[:, 0].any():  # the pelvis's turn about the vertical over the span
            up = np.einsum("ni,nij,nj->n", R[:, 0, 2], M[:, 0], turn_G[:, 0])
            rate = np.where(whole[:, 0], up / np.where(whole[:, 0], span_s, 1.0), 0.0)
            k = np.where(whole[:, 0], np.minimum(span_s / _TURN_TAU_S, 1.0), 0.0)
            a["yaw_rate"][rows] += k * (rate - a["yaw_rate"][rows])
        use = whole & ((turn_G * turn_G).sum(-1) >= _MIN_TURN**2)  # still: says nothing
        use &= (np.abs(a["yaw_rate"][rows]) <= _TURNING)[:, None]
        a["H"][rows] += use[..., None, None] * (turn_net[..., :, None] * turn_G[..., None, :])
        a["fit_s"][rows] += use * np.where(np.isfinite(span_s), span_s, 0.0)[:, None]
        a["M"][rows] = best_rotation(a["H"][rows] + _PRIOR)
        a["G"][rows] = _EYE
        a["gap"][rows] = False
        a["anchor"][rows] = R
        a["t_anchor"][rows] = t
