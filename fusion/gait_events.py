"""Gait events from foot trajectories, and per-stride parameters from events.

`detect_events` finds initial contact ("heel_strike_*": the foot's lowest point reaches the
floor and stops descending — the heel in normal gait, the forefoot in equinus) and toe off
("toe_off_*": the last point on the floor, normally the toe, starts to rise) from heel and toe
positions. It is what the generator's phase-based labels are checked against
(tests/test_gait_events.py: every labelled heel strike is found within EVENT_TOLERANCE) and it
works on any source of foot positions (synthetic ground truth, triangulated keypoints, marker
data) as long as z is up in metres.

`strides_from_events` turns events plus heel positions, knee flexion and heading into `Stride`
records: cadence (steps/min), step length (heel-to-heel along the direction of progression at
heel strike), stride length, speed and knee flexion at maximum extension (minimum knee flexion
in stance).
"""

from __future__ import annotations

import numpy as np

from fusion.kinematics import Stride
from fusion.skeleton import SIDES

EVENT_TOLERANCE = 0.020  # s: detected vs labelled event times in steady synthetic gait

CONTACT_HEIGHT = 0.005  # m above the floor estimate: below it the foot may be in contact
SWING_HEIGHT = 0.010  # m: above it the foot is in swing (below the ~15 mm toe clearance)
STOP_SPEED = 0.05  # m/s vertical: "stopped descending" / "started rising"
LIFT_HEIGHT = 0.001  # m: toe off refinement, height above the toe's resting level
MIN_SWING = 0.15  # s: shortest swing accepted (debounce)
MIN_STANCE = 0.08  # s: shortest contact accepted


def detect_events(
    times: np.ndarray, heel_pos: np.ndarray, toe_pos: np.ndarray, floor: float | None = None
) -> list[tuple[float, str]]:
    """Heel strikes and toe offs (time, label) from foot trajectories, sorted by time.

    times (T,) s, strictly increasing; heel_pos, toe_pos (T, 2, 3) m for sides (l, r), z up.
    `floor` is the floor height; by default the 2nd percentile of the feet's lowest points.
    """
    times = np.asarray(times, float)
    heel = np.asarray(heel_pos, float)
    toe = np.asarray(toe_pos, float)
    T = len(times)
    if times.ndim != 1 or T < 5:
        raise ValueError(f"times: need a 1-D array of at least 5 samples, got shape {times.shape}")
    if np.any(np.diff(times) <= 0):
        raise ValueError("times: must be strictly increasing")
    for name, arr in (("heel_pos", heel), ("toe_pos", toe)):
        if arr.shape != (T, 2, 3):
            raise ValueError(f"{name}: shape {arr.shape}, expected ({T}, 2, 3) (sides l, r)")
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: contains NaN or inf")
    low = np.minimum(heel[..., 2], toe[..., 2])  # (T, 2) lowest point of each foot
    if floor is None:
        floor = float(np.percentile(low, 2.0))
    h = low - floor
    vz_low = np.gradient(low, times, axis=0)
    vz_toe = np.gradient(toe[..., 2], times, axis=0)
    events: list[tuple[float, str]] = []
    for k, side in enumerate(SIDES):
        for i0, i1, observed in _contact_windows(times, h[:, k]):
            hs = None
            if observed:
                # initial contact: the lowest point stops descending (after its fastest
                # descent), looked for around the first sample near the floor
                near = i0 + int(np.argmax(h[i0 : i1 + 1, k] < CONTACT_HEIGHT))
                end = min(i1, int(np.searchsorted(times, times[near] + 0.1)))
                hs = _first_crossing(times, vz_low[:, k], -STOP_SPEED, i0, end)
                if hs is not None:
                    events.append((hs, f"heel_strike_{side}"))
            # toe off: the toe starts rising for good (before the foot is clearly in swing)
            if h[i1, k] <= SWING_HEIGHT:
                continue  # the data end before this foot leaves the floor
            j0 = i0 if hs is None else int(np.searchsorted(times, hs))
            to = _last_crossing(times, vz_toe[:, k], STOP_SPEED, j0, i1 + 1)
            if to is not None:
                to = _refine_lift(times, toe[:, k, 2], j0, to)
                events.append((to, f"toe_off_{side}"))
    return sorted(events)


def _contact_windows(times: np.ndarray, h: np.ndarray) -> list[tuple[int, int, bool]]:
    """(i0, i1, strike_observed) around each contact: from the last sample above SWING_HEIGHT
    before the foot reaches CONTACT_HEIGHT to the first sample above SWING_HEIGHT after it
    (hysteresis). A contact already under way at the start has no observed strike (its toe
    off still counts)."""
    swing = h > SWING_HEIGHT
    near = h < CONTACT_HEIGHT
    T = len(h)
    swing_ends = np.flatnonzero(swing[:-1] & ~swing[1:])  # last swing sample of a run
    swing_starts = np.flatnonzero(~swing[:-1] & swing[1:]) + 1  # first swing sample
    out: list[tuple[int, int, bool]] = []
    if not swing[0] and len(swing_starts) and np.any(near[: swing_starts[0]]):
        out.append((0, int(swing_starts[0]), False))
    for a in swing_ends:
        later = swing_starts[swing_starts > a]
        b = int(later[0]) if len(later) else T - 1
        on = np.flatnonzero(near[a : b + 1])
        if len(on) == 0:
            continue
        if times[a + on[-1]] - times[a + on[0]] < MIN_STANCE:
            continue
        out.append((int(a), b, True))
    return out


def _first_crossing(
    times: np.ndarray, v: np.ndarray, level: float, i0: int, i1: int
) -> float | None:
    """First upward crossing of `level` in [i0, i1] after v's minimum there (interpolated)."""
    seg = v[i0 : i1 + 1]
    if len(seg) < 2:
        return None
    vmin = int(np.argmin(seg))
    below = seg[vmin:] < level
    idx = np.flatnonzero(below[:-1] & ~below[1:])
    if len(idx) == 0:
        return None
    return _interp_cross(times, v, i0 + vmin + int(idx[0]), level)


def _last_crossing(
    times: np.ndarray, v: np.ndarray, level: float, i0: int, i1: int
) -> float | None:
    """Last upward crossing of `level` in [i0, i1) (interpolated)."""
    seg = v[i0:i1]
    if len(seg) < 2:
        return None
    below = seg < level
    idx = np.flatnonzero(below[:-1] & ~below[1:])
    if len(idx) == 0:
        return None
    return _interp_cross(times, v, i0 + int(idx[-1]), level)


def _refine_lift(times: np.ndarray, z: np.ndarray, j0: int, t_cross: float) -> float:
    """A slow lift-off crosses the velocity threshold late: go back to where the toe's height
    left its resting level (LIFT_HEIGHT above the median of the preceding stance)."""
    j1 = int(np.searchsorted(times, t_cross))
    if j1 - j0 < 3:
        return t_cross
    rest = float(np.median(z[j0:j1]))
    j2 = min(len(z) - 1, j1 + 3)  # include the rise itself
    up = z[j0 : j2 + 1] > rest + LIFT_HEIGHT
    idx = np.flatnonzero(~up[:-1] & up[1:])
    if len(idx) == 0:
        return t_cross
    j = j0 + int(idx[-1])
    a, b = z[j] - rest, z[j + 1] - rest
    f = (LIFT_HEIGHT - a) / (b - a) if b != a else 0.0
    return float(min(t_cross, times[j] + np.clip(f, 0, 1) * (times[j + 1] - times[j])))


def _interp_cross(times: np.ndarray, v: np.ndarray, j: int, level: float) -> float:
    a, b = v[j], v[j + 1]
    f = 0.0 if b == a else (level - a) / (b - a)
    return float(times[j] + np.clip(f, 0.0, 1.0) * (times[j + 1] - times[j]))


def strides_from_events(
    events: list[tuple[float, str]],
    times: np.ndarray,
    heel_pos: np.ndarray,
    knee_flexion: np.ndarray,
    heading: np.ndarray,
) -> list[Stride]:
    """Per-stride parameters from events and trajectories sampled at `times`.

    heel_pos (T, 2, 3) m and knee_flexion (T, 2) deg for sides (l, r); heading (T,) rad, the
    direction of progression. A stride runs from a heel strike to the same foot's next one and
    needs a toe off of that foot between them; its step length is measured at its first heel
    strike against the other heel (the distance along the progression direction), so it is
    the length of the step that ended there.
    """
    times = np.asarray(times, float)
    heel = np.asarray(heel_pos, float)
    knee = np.asarray(knee_flexion, float)
    heading = np.asarray(heading, float)
    T = len(times)
    if heel.shape != (T, 2, 3) or knee.shape != (T, 2) or heading.shape != (T,):
        raise ValueError(
            f"strides_from_events: shapes heel_pos {heel.shape}, knee_flexion {knee.shape}, "
            f"heading {heading.shape}; expected ({T}, 2, 3), ({T}, 2), ({T},)"
        )
    labels = {lab for _, lab in events}
    unknown = labels - {f"{e}_{s}" for e in ("heel_strike", "toe_off") for s in SIDES}
    if unknown:
        raise ValueError(f"events: unknown labels {sorted(unknown)}")
    out: list[Stride] = []
    ev_t = np.array([t for t, _ in events], float)
    ev_l = np.array([lab for _, lab in events], dtype=object)
    for k, side in enumerate(SIDES):
        other = SIDES[1 - k]
        hs = np.sort(ev_t[ev_l == f"heel_strike_{side}"])
        tos = np.sort(ev_t[ev_l == f"toe_off_{side}"])
        hs_o = np.sort(ev_t[ev_l == f"heel_strike_{other}"])
        if len(hs) < 2:
            continue
        t0, t1 = hs[:-1], hs[1:]
        # exactly one own toe off and one contralateral heel strike inside: a normal stride
        n_to = np.searchsorted(tos, t1) - np.searchsorted(tos, t0, side="right")
        n_o = np.searchsorted(hs_o, t1) - np.searchsorted(hs_o, t0, side="right")
        ok = (n_to == 1) & (n_o == 1)
        if not np.any(ok):
            continue
        t0, t1 = t0[ok], t1[ok]
        t_to = tos[np.searchsorted(tos, t0, side="right")]
        h0 = _interp_rows(t0, times, heel[:, k])
        h1 = _interp_rows(t1, times, heel[:, k])
        ho = _interp_rows(t0, times, heel[:, 1 - k])
        psi = np.interp(t0, times, heading)
        fwd = np.stack([np.cos(psi), np.sin(psi)], axis=1)
        step = np.einsum("nd,nd->n", h0[:, :2] - ho[:, :2], fwd)
        stride_len = np.linalg.norm(h1[:, :2] - h0[:, :2], axis=1)
        dt = t1 - t0
        i0 = np.searchsorted(times, t0)
        i1 = np.maximum(np.searchsorted(times, t_to, side="right"), i0 + 1)
        kmin = np.array([knee[a:b, k].min() for a, b in zip(i0, i1, strict=True)])
        for j in range(len(t0)):
            out.append(
                Stride(
                    side=side,
                    t_start=float(t0[j]),
                    t_end=float(t1[j]),
                    toe_off=float(t_to[j]),
                    cadence=float(120.0 / dt[j]),
                    step_length=float(step[j]),
                    stride_length=float(stride_len[j]),
                    speed=float(stride_len[j] / dt[j]),
                    knee_flexion_max_ext=float(kmin[j]),
                )
            )
    out.sort(key=lambda s: s.t_start)
    return out


def _interp_rows(tq: np.ndarray, times: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Linear interpolation of (T, D) values at query times (N,) → (N, D)."""
    return np.stack([np.interp(tq, times, values[:, d]) for d in range(values.shape[1])], axis=1)


def match_events(
    detected: list[tuple[float, str]], labelled: list[tuple[float, str]], tolerance: float
) -> tuple[np.ndarray, int, int]:
    """Pair each labelled event with the nearest detected one of the same label.

    Returns (errors in s of the matched labelled events, number missed, number of detected
    events that match no label), all within `tolerance`.
    """
    errors: list[float] = []
    missed = 0
    used: set[int] = set()
    det_t = np.array([t for t, _ in detected])
    det_l = np.array([lab for _, lab in detected], dtype=object)
    for t, lab in labelled:
        cand = np.flatnonzero(det_l == lab) if len(det_l) else np.array([], int)
        if len(cand) == 0:
            missed += 1
            continue
        j = cand[np.argmin(np.abs(det_t[cand] - t))]
        if abs(det_t[j] - t) <= tolerance and j not in used:
            errors.append(float(det_t[j] - t))
            used.add(int(j))
        else:
            missed += 1
    extra = len(detected) - len(used)
    return np.array(errors), missed, extra
