"""Record → replay round trip: a replayed recording gives the pipeline the angles it gave live.

Live run: the simulated lab's 13 IMU streams (drivers.simlab, no cameras, activity start_stop)
are recorded to XDF (drivers.xdf_record.XdfRecorder) while the pipeline (run_pipeline, IMU-only
sync) runs on them and an inlet reads its `gait-stream/angles`. Both consumers connect before
the lab's first sample, so the recording holds exactly what the live pipeline saw. Replay run:
drivers.xdf_replay.XdfReplayer re-publishes the file (source ids suffixed, so nothing can mix
the two runs) into a fresh pipeline with the same config. The replayed angles, moved back to
recording time (t − replay.t_start + replay.t0), are compared with the live angles interpolated
there (model ticks are on the absolute 1/60 s grid, so the two runs' ticks differ in phase).

Tolerance: per lower-limb angle, over the ticks where both runs state it (≥ MIN_COMMON_S),
the median |replay − live| ≤ MEDIAN_TOL_DEG (HEADING_TOL_DEG for hip rotation and foot
progression) and its 90th percentile ≤ P90_TOL_DEG, absolute (no offset taken out). Why not ~0: the replay's ticks fall at another phase of the 100 Hz
samples (the model ticks are on the absolute 1/60 s grid), so every tick interpolates
slightly different IMU values, the calibration captures differ by that, and the lab's
sensor noise is the same but resampled. Offline, the same 60 Hz stream cut differently
gives identical angles (tests/test_classical_estimator.py); shifting the tick phase by a
fraction of a sample moves the lower-limb angles by well under a degree. A timestamp shift
of a stride fraction, a channel mix-up, lost samples or a calibration that differs (it did:
knee_flexion_l 22° and hip_rotation_l 11° apart before the estimator decided everything per
tick) fail it.
"""

from __future__ import annotations

import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

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
MEDIAN_TOL_DEG = 1.0  # per lower-limb angle: the same data gives (nearly) the same angles
#: hip rotation and foot progression hang on each sensor's filter heading, which the tick
#: phase moves most (offline, the same lab stream ticked 0.77 tick later: up to 2.2 deg)
HEADING_ANGLES = {a for a in LOWER_LIMB_ANGLES if a.startswith(("hip_rotation", "foot_prog"))}
HEADING_TOL_DEG = 3.5
P90_TOL_DEG = 4.5
MIN_COMMON_S = 6.0  # both runs must state the lower-limb angles together this long


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
            "model": {"rate_hz": 60.0, "estimator": "classical", "lookahead": 0, "device": "cpu"},
            "sync": {"wait_for": ["imu"]},
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


def replay_run(path: Path, tag: str) -> tuple[XdfReplayer, np.ndarray, np.ndarray]:
    suffix = "-replay"
    rep = XdfReplayer(path, source_id_suffix=suffix)
    ids = {s.name.rsplit("-", 1)[1]: s.source_id + suffix for s in rep.streams}
    assert sorted(ids) == sorted(SEGMENTS), [s.name for s in rep.streams]
    out_id = f"gs-{tag}-replay"
    reader: list[AnglesReader] = []
    stop = threading.Event()

    def on_ready(pipe: Any) -> None:
        reader.append(AnglesReader(out_id))
        rep.start()

        def until_done() -> None:
            rep.join()
            time.sleep(1.5)  # the last ticks
            stop.set()

        threading.Thread(target=until_done, daemon=True).start()

    try:
        run_pipeline(
            make_config(tag, ids, out_id), rep.duration + 15.0, on_ready=on_ready, stop=stop
        )
    finally:
        rep.close()
    assert rep.error is None, rep.error
    t, x = reader[0].result()
    return rep, t, x


@pytest.mark.known_issue(
    reason="the right leg differs between live and replay (measured twice: knee_flexion_r "
    "+9.6, ankle_dorsiflexion_r +9.8, foot_progression_r -11.6 deg median; every other "
    "lower-limb angle within tolerance); the estimator itself is reproducible offline"
)
def test_replayed_recording_reproduces_live_angles(tmp_path: Path, ray_session: None) -> None:
    tag = uuid.uuid4().hex[:8]
    path, t_live, x_live, _summary = live_run(tmp_path, tag)
    assert len(t_live) > 0.8 * 60 * LIVE_S, f"live: only {len(t_live)} angle samples"

    rep, t_rep, x_rep = replay_run(path, tag)
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
