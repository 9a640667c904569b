"""`gait-stream filter-check`: how fast and how right the orientation filters are.

    gait-stream filter-check [--data DIR] [--sensors 13] [--subjects 1,4,16] [--no-marg]
                             [--no-estimator] [--max-seconds S]

1. Time per sample: `ahrs` (Madgwick, Mahony, EKF — pure Python, one sensor per call) against
   `fusion.orientation.OrientationFilter` (all sensors of all subjects in one NumPy step), and
   what a tick of 13 sensors costs each way.
2. The classical IMU estimator's time per 60 Hz tick, 1…N subjects in one `update_many`
   (synthetic stand + walk, after calibration).
3. Orientation error against optical ground truth on the BROAD trials (Laidig et al. 2021,
   CC-BY-4.0, HDF5 in DIR): RMS total / heading / inclination error over the movement phase,
   BROAD's own definitions (`fusion.orientation.orientation_errors`). The files' optical
   quaternions are already aligned to the IMU axes and to an ENU earth frame (their README:
   "synchronized and aligned optical reference data"); a 9-D Madgwick estimate is turned
   from its north-west-up earth frame into ENU by the 90° yaw BROAD's example code applies; a
   6-D estimate has no absolute heading, so its mean heading offset is removed first and its
   heading error is drift. Also: agreement of our Madgwick/Mahony with ahrs's on the same input.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from fusion.orientation import FilterConfig, OrientationFilter, orientation_errors, quat_multiply
from services.commands.argtypes import at_least_1, positive

__all__ = ["load_broad_trial", "register", "run"]

#: BROAD's example code: q_ENU = q_z(90°) ⊗ q_NWU for a 9-D Madgwick/Mahony estimate
NWU_TO_ENU = np.array([np.sqrt(0.5), 0.0, 0.0, np.sqrt(0.5)])


def default_broad_dir() -> Path:
    base = os.environ.get("GAIT_STREAM_SHARED_DATA")
    root = Path(base) if base else Path(__file__).resolve().parents[3] / "shared" / "data"
    return root / "imu" / "broad_orientation_omc"


def load_broad_trial(path: str | Path) -> dict[str, Any]:
    """One BROAD HDF5 trial: gyr rad/s, acc m/s², mag µT (T, 3), opt_quat (T, 4) (w, x, y, z,
    ENU, NaN where the markers were occluded), movement (T,) bool, rate Hz, name."""
    import h5py  # a dev dependency: only this command and the tests read HDF5

    path = Path(path)
    try:
        with h5py.File(path, "r") as f:
            missing = [
                k for k in ("imu_gyr", "imu_acc", "imu_mag", "opt_quat", "movement") if k not in f
            ]
            if missing:
                raise ValueError(f"BROAD file {path}: missing datasets {missing}")
            out = {k: np.asarray(f[k][:], float) for k in ("imu_gyr", "imu_acc", "imu_mag")}
            out["opt_quat"] = np.asarray(f["opt_quat"][:], float)
            out["movement"] = np.asarray(f["movement"][:]).astype(bool).reshape(-1)
            rate = f.attrs.get("sampling_rate")
    except OSError as e:
        raise ValueError(f"BROAD file {path}: not readable as HDF5 ({e})") from e
    if rate is None or not np.isfinite(float(rate)) or float(rate) <= 0:
        raise ValueError(f"BROAD file {path}: attribute 'sampling_rate' missing or not > 0")
    T = len(out["imu_gyr"])
    for k in ("imu_acc", "imu_mag", "opt_quat", "movement"):
        if len(out[k]) != T:
            raise ValueError(f"BROAD file {path}: {k} has {len(out[k])} samples, imu_gyr {T}")
    out["rate"] = float(rate)
    out["name"] = path.stem
    return out


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "filter-check",
        help="orientation filter speed (ahrs vs vectorised) and accuracy on BROAD",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--data", type=Path, default=None, help="BROAD HDF5 folder")
    p.add_argument("--sensors", type=at_least_1, default=13, help="sensors per subject (13)")
    p.add_argument("--subjects", default="1,4,16", help="subject counts to time (1,4,16)")
    p.add_argument("--samples", type=at_least_1, default=1000, help="samples per timing run (1000)")
    p.add_argument("--no-marg", action="store_true", help="skip the (slower) 9-D runs")
    p.add_argument("--no-estimator", action="store_true", help="skip the estimator timing")
    p.add_argument("--max-seconds", type=positive, default=None, help="truncate BROAD trials")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    subjects = [int(s) for s in str(args.subjects).split(",") if s.strip()]
    _timing(args.sensors, subjects, args.samples)
    if not args.no_estimator:
        _estimator_timing(subjects)
    data = args.data or default_broad_dir()
    files = sorted(Path(data).glob("*.hdf5"))
    if not files:
        print(f"error: no BROAD .hdf5 files in {data}", file=sys.stderr)
        return 2
    try:
        trials = [load_broad_trial(f) for f in files]
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.max_seconds:
        for tr in trials:
            n = int(args.max_seconds * tr["rate"])
            for k in ("imu_gyr", "imu_acc", "imu_mag", "opt_quat", "movement"):
                tr[k] = tr[k][:n]
    _broad(trials, marg=not args.no_marg)
    return 0


# -- 1. speed ---------------------------------------------------------------------------------
def _timing(n_sensors: int, subjects: list[int], n: int) -> None:
    from ahrs.filters import EKF, Madgwick, Mahony

    rng = np.random.default_rng(0)
    gyr = rng.normal(0.0, 1.0, (n, 3))
    acc = rng.normal(0.0, 1.0, (n, 3)) + (0.0, 0.0, 9.81)
    print("\n== filter time per sample (gyro + accelerometer, 6-D)")
    print(f"{'filter':44s} {'µs/sample':>10s} {'ms per tick of 13':>18s}")
    for name, f, call in (
        ("ahrs Madgwick.updateIMU", Madgwick(frequency=60.0), "updateIMU"),
        ("ahrs Mahony.updateIMU", Mahony(frequency=60.0), "updateIMU"),
        ("ahrs EKF.update", EKF(frequency=60.0), "update"),
    ):
        m = min(n, 400 if name.endswith("EKF.update") else n)
        q = np.array([1.0, 0.0, 0.0, 0.0])
        fn = getattr(f, call)
        t0 = time.perf_counter()
        for i in range(m):
            q = fn(q, gyr[i], acc[i])
        us = (time.perf_counter() - t0) / m * 1e6
        print(f"{name:44s} {us:10.1f} {us * n_sensors / 1e3:18.2f}")
    for cfg in (
        FilterConfig("madgwick", gain=0.1),
        FilterConfig("mahony", k_p=0.1, k_i=0.003, integration="exact", acc_scale="gravity"),
    ):
        for s in subjects:
            filt = OrientationFilter((s, n_sensors), cfg)
            g = np.broadcast_to(gyr[:, None, None, :], (n, s, n_sensors, 3))
            a = np.broadcast_to(acc[:, None, None, :], (n, s, n_sensors, 3))
            filt.step(g[0], a[0], 1 / 60)
            t0 = time.perf_counter()
            for i in range(1, n):
                filt.step(g[i], a[i], 1 / 60)
            per_step = (time.perf_counter() - t0) / (n - 1)
            label = f"ours {cfg.algorithm} ({s}×{n_sensors} sensors per step)"
            print(
                f"{label:44s} {per_step / (s * n_sensors) * 1e6:10.2f} {per_step / s * 1e3:18.3f}"
            )


# -- 2. estimator per tick ----------------------------------------------------------------------
def _estimator_timing(subjects: list[int]) -> None:
    from fusion.activities import stand_then_walk
    from fusion.body import BodyModel
    from fusion.estimators.base import SyncedBatch
    from fusion.estimators.classical import ClassicalImuEstimator
    from fusion.imu_sim import default_placements, simulate_imu
    from fusion.normative import load_default_normative

    rng = np.random.default_rng(1)
    body, norm = BodyModel(), load_default_normative()
    motion = stand_then_walk(3.0, 12.0, body, rng, norm)
    t = np.arange(0.0, motion.t[-1], 1 / 60)
    imu = simulate_imu(motion, t, default_placements(body))
    print("\n== classical IMU estimator, one 60 Hz tick per update_many call")
    print(
        f"{'subjects':>8s} {'p50 ms':>8s} {'p99 ms':>8s} {'max ms':>8s} {'ms/subject':>11s}"
        f" {'calibration tick ms':>20s}   (steady: from 1 s after calibration)"
    )
    for s in subjects:
        est = ClassicalImuEstimator()
        lat = []
        i_cal = None
        for i in range(len(t)):
            b = SyncedBatch(
                t=t[i : i + 1],
                imu=imu[i : i + 1],
                imu_mask=np.ones((1, 13), bool),
                keypoints=np.zeros((1, 0, 17, 3)),
                keypoint_mask=np.zeros((1, 0), bool),
            )
            t0 = time.perf_counter()
            est.update_many({f"s{k}": b for k in range(s)})
            lat.append(time.perf_counter() - t0)
            if i_cal is None and est.calibration("s0") is not None:
                i_cal = i
        if i_cal is None:
            print(f"{s:8d}  (NOT calibrated)")
            continue
        x = np.array(lat[i_cal + 60 :]) * 1e3
        print(
            f"{s:8d} {np.percentile(x, 50):8.2f} {np.percentile(x, 99):8.2f} {x.max():8.2f} "
            f"{np.percentile(x, 50) / s:11.2f} {lat[i_cal] * 1e3:20.1f}"
        )


# -- 3. BROAD ---------------------------------------------------------------------------------
def _stack(trials: list[dict[str, Any]], key: str) -> np.ndarray:
    T = max(len(tr[key]) for tr in trials)
    out = np.full((T, len(trials), 3), np.nan)
    for i, tr in enumerate(trials):
        out[: len(tr[key]), i] = tr[key]
    return out


def _broad(trials: list[dict[str, Any]], marg: bool) -> None:
    from ahrs.filters import Madgwick, Mahony

    rates = {tr["rate"] for tr in trials}
    if len(rates) != 1:
        raise ValueError(f"BROAD trials at different rates {sorted(rates)}")
    dt = 1.0 / rates.pop()
    gyr, acc, mag = _stack(trials, "imu_gyr"), _stack(trials, "imu_acc"), _stack(trials, "imu_mag")
    from fusion.estimators.classical import ClassicalImuConfig

    runs: list[tuple[str, FilterConfig, bool]] = [
        ("ours Madgwick 6-D (estimator default)", ClassicalImuConfig().filter, False),
        ("ours Madgwick 6-D β=0.1", FilterConfig("madgwick", gain=0.1), False),
        (
            "ours Mahony 6-D linear kP=0.1",
            FilterConfig("mahony", k_p=0.1, k_i=0.003, integration="exact", acc_scale="gravity"),
            False,
        ),
    ]
    if marg:
        runs.append(
            ("ours Madgwick 9-D β=0.12 (BROAD TAGP)", FilterConfig("madgwick", gain=0.12), True)
        )
    print("\n== BROAD: RMS orientation error over the movement phase (deg)")
    print(f"{'filter':44s} {'trial':36s} {'total':>6s} {'heading':>8s} {'inclin.':>8s}")
    for label, cfg, use_mag in runs:
        filt = OrientationFilter((len(trials),), cfg)
        Q = filt.run(gyr, acc, dt, mag=mag if use_mag else None)
        for i, tr in enumerate(trials):
            q = Q[: len(tr["imu_gyr"]), i]
            if use_mag:
                q = quat_multiply(NWU_TO_ENU, q)
            e = orientation_errors(
                q, tr["opt_quat"], tr["movement"], remove_heading_offset=not use_mag
            )
            print(
                f"{label:44s} {tr['name']:36s} {e['total']:6.2f} {e['heading']:8.2f} "
                f"{e['inclination']:8.2f}"
            )
    print("\n== agreement with ahrs on the same input (first 3000 samples of each trial)")
    for tr in trials:
        g, a = tr["imu_gyr"][:3000], tr["imu_acc"][:3000]
        for label, ref, cfg in (
            (
                "Madgwick β=0.1",
                Madgwick(gyr=g, acc=a, frequency=1 / dt, gain=0.1),
                FilterConfig("madgwick", gain=0.1),
            ),
            ("Mahony kP=1 kI=0.3", Mahony(gyr=g, acc=a, frequency=1 / dt), FilterConfig("mahony")),
        ):
            ours = OrientationFilter((), cfg).run(g, a, dt)
            d = quat_multiply(ours, ref.Q * np.array([1.0, -1.0, -1.0, -1.0]))
            ang = 2.0 * np.arcsin(np.clip(np.linalg.norm(d[:, 1:], axis=1), 0.0, 1.0))
            print(
                f"{label:20s} {tr['name']:36s} max |ours − ahrs| = {np.degrees(ang.max()):.2e} deg"
            )
