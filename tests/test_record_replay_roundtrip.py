"""Record → replay round trip: a replayed recording gives the pipeline the angles it gave live.

Live run: the simulated lab's 13 IMU streams (drivers.simlab, no cameras, activity start_stop)
are recorded to XDF (drivers.xdf_record.XdfRecorder) while the pipeline (run_pipeline, IMU-only
sync) runs on them and an inlet reads its `gait-stream/angles`. Both consumers connect before
the lab's first sample, so the recording holds exactly what the live pipeline saw. Replay run:
drivers.xdf_replay.XdfReplayer re-publishes the file (source ids suffixed, so nothing can mix
the two runs) into a fresh pipeline with the same config, starting at a whole number of model
ticks after the recording's first sample (`on_tick_phase`): the model ticks are on the
absolute 1/60 s grid, so every replayed tick then falls at the same phase of the 100 Hz
samples as its live tick did. The replayed angles, moved back to recording time
(t − replay.t_start + replay.t0), are compared with the live angles interpolated there.

Tolerance: per lower-limb angle, over the ticks where both runs state it (≥ MIN_COMMON_S), the
median |replay − live| ≤ MEDIAN_TOL_DEG (HEADING_TOL_DEG for hip rotation and foot progression)
and its 90th percentile ≤ P90_TOL_DEG, absolute (no offset taken out). Measured (3 runs): median
≤ 0.21°, ≤ 1.16° for the heading angles, 90th percentile ≤ 1.9°. Why not 0: a tick masked in
one run only (the sync's view of a late sample) changes the calibration capture slightly, and
the heading angles hang on it most. Before the replay started on the tick phase, ticks fell at
another phase of the samples in each run, the heading angles differed by up to 3° and the test
failed now and then at 3.5° (offline, the same stream ticked 0.77 tick later: up to 2.2°). A
timestamp shift of a stride fraction, a channel mix-up, lost samples or a calibration that
differs (it did: knee_flexion_l 22° and hip_rotation_l 11° apart before the estimator decided
everything per tick) fail it. So did the replayer sending pyxdf's dejittered stamps (issue #5):
its line fit of stamp on sample index ignores lost samples, and the lab's lossiest streams
(shank_r, foot_r: ~1 % lost in bursts) came back up to 70-90 ms off, the right leg ~10° off; it
now sends the recorded stamps and the pipeline dejitters them as it did live.

Load: the runs compare what the pipeline computed from the same samples, not how fast. The
sync stage waits for every stream (MAX_WAIT_MS) instead of masking a tick whose data is late
on a busy machine, so what each tick holds depends on the data alone; samples dropped for lack
of time (ingest backlog, sync behind, a full queue: a stall of 0.5 s or more) would make the
comparison meaningless, so such a run is done again (MAX_ATTEMPTS), and it says so.
"""

from __future__ import annotations

import math
import socket
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pylsl
import pytest

from drivers.selectors import StreamSelector, resolve
from drivers.simlab import SimulatedLab
from drivers.xdf_record import XdfRecorder
from drivers.xdf_replay import XdfReplayer
from fusion.skeleton import ANGLE_INDEX, ANGLES, LOWER_LIMB_ANGLES, SEGMENTS
from fusion.synth import LabSpec
from services.config import Config, parse_config
from services.pipeline import run_pipeline

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LIVE_S = 20.0  # lab time: stand 2 s, then start_stop walking; calibration needs ~8 s
MEDIAN_TOL_DEG = 0.5  # per lower-limb angle: the same data gives (nearly) the same angles
#: hip rotation and foot progression hang on each sensor's filter heading, which a tick masked
#: in one run only moves most
HEADING_ANGLES = {a for a in LOWER_LIMB_ANGLES if a.startswith(("hip_rotation", "foot_prog"))}
HEADING_TOL_DEG = 2.5
P90_TOL_DEG = 3.5
MIN_COMMON_S = 6.0  # both runs must state the lower-limb angles together this long
#: a tick waits this long for late data before it goes out masked (default 40 ms): a busy
#: machine delays samples, and a tick masked in one run only would differ for that reason
MAX_WAIT_MS = 1000.0
STALE_AFTER_MS = 2000.0  # a stream counts as live (holds the ticks) this long after its data
#: gait_stream_dropped_total reasons that mean "no time" (a stall), not a defect
BUSY_REASONS = ("|queue_full", "|behind", "|backlog")
RATE_HZ = 60.0
MAX_ATTEMPTS = 3  # runs that dropped data for lack of time are done again, this many at most
R = TypeVar("R", bound=tuple)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_config(tag: str, imu_source_ids: dict[str, str], out_id: str) -> Config:
    """IMU-only pipeline on the named streams, with this run's own ports and output ids."""
    return parse_config(
        {
            "ray": {"address": None, "num_cpus": 2},
            "simulate": {"enabled": False},
            "subjects": [
                {
                    "id": "s0",
                    "imu": {seg: {"source_id": imu_source_ids[seg]} for seg in SEGMENTS},
                    "cameras": [],
                }
            ],
            "calibration": None,
            "model": {
                "rate_hz": RATE_HZ,
                "estimator": "classical",
                "lookahead": 0,
                "device": "cpu",
            },
            "sync": {
                "wait_for": ["imu"],
                "max_wait_ms": MAX_WAIT_MS,
                "stale_after_ms": STALE_AFTER_MS,
            },
            "metrics": {"enabled": True, "host": "127.0.0.1", "port": free_port()},
            "outputs": {
                "lsl": True,
                "lsl_source_id": out_id,
                "zmq": f"tcp://127.0.0.1:{free_port()}",
            },
        },
        source=f"<roundtrip {tag}>",
    )


class AnglesReader:
    """Pulls the pipeline's `gait-stream/angles` for one subject in a thread until stopped."""

    def __init__(self, out_id: str) -> None:
        sel = StreamSelector(source_id=f"{out_id}/angles/s0")
        infos = resolve([sel], 10.0, minimum=1)[sel]
        assert infos, f"angles stream {sel.source_id!r} not found"
        self.inlet = pylsl.StreamInlet(infos[0], max_buflen=120, processing_flags=0)
        self.inlet.open_stream(5.0)
        self.t: list[float] = []
        self.x: list[list[float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            x, t = self.inlet.pull_chunk(timeout=0.1)
            if t:
                self.t += t
                self.x += x

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        self._stop.set()
        self._thread.join(5.0)
        self.inlet.close_stream()
        return np.asarray(self.t), np.asarray(self.x, dtype=float).reshape(-1, len(ANGLES))


def busy_drops(summary: dict[str, Any]) -> dict[str, float]:
    """The run's gait_stream_dropped_total counts that mean it ran out of time."""
    dropped = summary.get("metrics", {}).get("totals", {}).get("dropped", {})
    return {k: v for k, v in dropped.items() if v and k.endswith(BUSY_REASONS)}


def until_not_busy(name: str, run: Callable[[int], R]) -> R:
    """`run(attempt)` again while it dropped data for lack of time (at most MAX_ATTEMPTS)."""
    for attempt in range(MAX_ATTEMPTS):
        result = run(attempt)
        busy = busy_drops(result[-1])  # type: ignore[index]
        if not busy:
            return result
        print(f"{name} run {attempt + 1}: dropped {busy} for lack of time; again")
    raise AssertionError(
        f"{name} run dropped data for lack of time {MAX_ATTEMPTS} times (last: {busy}): the "
        "machine is too busy for a like-for-like comparison; not a round-trip defect"
    )


def live_run(tmp_path: Path, tag: str) -> tuple[Path, np.ndarray, np.ndarray, dict[str, Any]]:
    lab = SimulatedLab(LabSpec(n_cameras=0, activity="start_stop", seed=3), f"rt{tag}", run_tag=tag)
    ids = lab.imu_source_ids(0)
    sels = [StreamSelector(source_id=ids[seg]) for seg in SEGMENTS]
    found = resolve(sels, 10.0, minimum=len(sels))
    infos = [found[s][0] for s in sels if found[s]]
    assert len(infos) == len(SEGMENTS), "simulated lab's IMU streams not all found"
    path = tmp_path / "live.xdf"
    recorder = XdfRecorder(path, infos)
    recorder.start()
    out_id = f"gs-{tag}-live"
    reader: list[AnglesReader] = []

    def on_ready(pipe: Any) -> None:
        assert not pipe.info.get("imu", {}).get("missing"), pipe.info.get("imu")
        reader.append(AnglesReader(out_id))
        lab.start()  # the recorder and the pipeline are both connected: same first sample

    try:
        summary = run_pipeline(make_config(tag, ids, out_id), LIVE_S, on_ready=on_ready)
    finally:
        lab.stop()
        recorder.stop()
        recorder.join(10.0)
    t, x = reader[0].result()
    return path, t, x, summary


def on_tick_phase(t0: float, not_before: float) -> float:
    """The first local time ≥ not_before whose distance to t0 is whole model ticks.

    Replayed there, every tick sits at the same phase of the samples as it did live."""
    return t0 + math.ceil((not_before - t0) * RATE_HZ) / RATE_HZ


def replay_run(
    path: Path, tag: str, attempt: int = 0
) -> tuple[XdfReplayer, np.ndarray, np.ndarray, dict[str, Any]]:
    suffix = f"-replay{attempt}"  # an attempt's streams never mix with an earlier one's
    rep = XdfReplayer(path, source_id_suffix=suffix)
    ids = {s.name.rsplit("-", 1)[1]: s.source_id + suffix for s in rep.streams}
    assert sorted(ids) == sorted(SEGMENTS), [s.name for s in rep.streams]
    out_id = f"gs-{tag}-replay{attempt}"
    reader: list[AnglesReader] = []
    stop = threading.Event()

    def on_ready(pipe: Any) -> None:
        reader.append(AnglesReader(out_id))
        rep.start(on_tick_phase(rep.t0, pylsl.local_clock() + 0.05))

        def until_done() -> None:
            rep.join()
            time.sleep(MAX_WAIT_MS / 1e3 + 0.5)  # the last ticks
            stop.set()

        threading.Thread(target=until_done, daemon=True).start()

    try:
        summary = run_pipeline(
            make_config(tag, ids, out_id), rep.duration + 15.0, on_ready=on_ready, stop=stop
        )
    finally:
        rep.close()
    assert rep.error is None, rep.error
    t, x = reader[0].result()
    return rep, t, x, summary


@pytest.mark.timeout(900)  # ~100 s; a run that dropped data for lack of time is run again
def test_replayed_recording_reproduces_live_angles(tmp_path: Path, ray_session: None) -> None:
    tag = uuid.uuid4().hex[:8]

    def live(attempt: int) -> tuple[Path, np.ndarray, np.ndarray, dict[str, Any]]:
        (tmp_path / str(attempt)).mkdir()
        return live_run(tmp_path / str(attempt), f"{tag}{attempt}")

    path, t_live, x_live, live_summary = until_not_busy("live", live)
    assert len(t_live) > 0.8 * 60 * LIVE_S, f"live: only {len(t_live)} angle samples"

    rep, t_rep, x_rep, rep_summary = until_not_busy(
        "replay", lambda attempt: replay_run(path, tag, attempt)
    )
    for name, summary in (("live", live_summary), ("replay", rep_summary)):
        totals = summary.get("metrics", {}).get("totals", {})
        dropped = {k: v for k, v in totals.get("dropped", {}).items() if v}
        assert not dropped, f"{name} run dropped data: {dropped}"
        masked, late = totals.get("masked", {}), totals.get("late", {})
        print(f"{name}: masked ticks {masked}, late samples {int(sum(late.values()))}")
        given_up = [k for k, v in totals.get("bad_input", {}).items() if "dejitter" in k and v]
        assert not given_up, f"{name} run: dejitter given up for {given_up} (see sync._flush_imu)"
    assert sum(rep.sent.values()) == sum(len(s) for s in rep.streams), "replay lost samples"
    assert len(t_rep) > 0.8 * 60 * rep.duration, f"replay: only {len(t_rep)} angle samples"

    t_back = t_rep - rep.t_start + rep.t0  # replay time → recording (= live) time
    inside = (t_back >= t_live[0]) & (t_back <= t_live[-1])
    medians, p90s, offsets = {}, {}, {}
    for a in LOWER_LIMB_ANGLES:
        i = ANGLE_INDEX[a]
        live_ok = np.isfinite(x_live[:, i])
        assert live_ok.sum() > MIN_COMMON_S * 60, (
            f"{a}: the live run stated it for only {live_ok.sum()} ticks (no calibration?)"
        )
        # interpolate only between live ticks that both state the angle
        ref = np.interp(t_back, t_live[live_ok], x_live[live_ok, i], left=np.nan, right=np.nan)
        near = np.interp(t_back, t_live, live_ok.astype(float), left=0.0, right=0.0) == 1.0
        both = inside & near & np.isfinite(ref) & np.isfinite(x_rep[:, i])
        assert both.sum() > MIN_COMMON_S * 60, (
            f"{a}: live and replay state it together for only {both.sum()} ticks "
            f"(live {live_ok.sum()}, replay {np.isfinite(x_rep[:, i]).sum()})"
        )
        d = x_rep[both, i] - ref[both]
        offsets[a] = float(np.median(d))
        medians[a] = float(np.median(np.abs(d)))
        p90s[a] = float(np.percentile(np.abs(d), 90))
    print(
        "round trip replay - live (deg): "
        + ", ".join(
            f"{a} median d {offsets[a]:+.2f} med|d| {medians[a]:.2f} p90 {p90s[a]:.2f}"
            for a in LOWER_LIMB_ANGLES
        )
    )
    tol = {a: HEADING_TOL_DEG if a in HEADING_ANGLES else MEDIAN_TOL_DEG for a in medians}
    bad = {a: round(m, 3) for a, m in medians.items() if m > tol[a]}
    assert not bad, f"median |replay - live| over {MEDIAN_TOL_DEG} deg ({HEADING_TOL_DEG}): {bad}"
    bad = {a: round(m, 3) for a, m in p90s.items() if m > P90_TOL_DEG}
    assert not bad, f"90th percentile |replay - live| over {P90_TOL_DEG} deg: {bad}"
