"""`gait-stream conventions-check`: our joint-angle conventions against real motion capture.

    gait-stream conventions-check [--json] [--data DIR]

Builds segment frames from real markers (fusion/markers.py), turns them into our clinical
angles (fusion/angles.py) and compares them with OpenSim's inverse-kinematics result for the
same trial (`subject01_walk1_ik.mot`, model Gait2354), per angle: Pearson r, mean offset,
RMSE and offset-removed RMSE. A sign-convention error shows up as r ≈ −1; differing frame
definitions (marker-based anatomical frames vs the scaled model's bodies) as an offset.

The trial: `subject01_walk1_ik.mot` is OpenSim's IK of `subject01_walk1.trc` (60 Hz, the
subject walks on the spot in the lab frame: pelvis_tx stays within a few cm). Its markers are
in `walk_free_01.trc` (frames 185–257 of that trial, 3.067–4.267 s; the IK covers 0.5–4.0 s,
so they overlap for 3.083–4.000 s, 56 IK samples, about one stride) with the static trial
`subject01_static.trc` for the knee and ankle centres. `markers_walk.trc` (the 41-marker set,
100 Hz, 0–2.37 s) is a *different* trial — overground, the pelvis travels ≈ 3 m — so it
cannot be compared with that IK sample by sample; its right stride (heel strikes from its
force plates, grf_walk.mot) is compared with the Schwartz 2008 normative mean instead, a
sign check on an independent subject.

Exit status: 0 when every hip/knee/ankle angle with a usable range agrees in sign (r > 0.8),
1 otherwise, 2 when the data cannot be read.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from drivers.opensim_files import OpenSimFileError, read_mot, read_trc
from fusion.gait import contact_events
from fusion.gdi import GDI_VARIABLES, stride_curves
from fusion.markers import (
    CALIBRATED,
    LATERAL,
    OPENSIM_GAIT2354_MAP,
    carry_markers,
    compare_series,
    frames_from_markers,
    frames_to_angles,
    opensim_to_lab,
)
from fusion.skeleton import ANGLE_INDEX, SIDES

__all__ = ["conventions_check", "default_data_dir", "format_markdown", "register", "run"]

FOLDER = Path("markers") / "opensim_core_walking"
#: below this reference range (deg) a correlation cannot tell a sign apart from noise
MIN_RANGE_DEG = 3.0
R_AGREE = 0.8


def default_data_dir() -> Path:
    """GAIT_STREAM_SHARED_DATA, else ../shared/data beside the checkout (as the tests do)."""
    env = os.environ.get("GAIT_STREAM_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[3] / "shared" / "data"


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "conventions-check",
        help="compare our joint angles from real markers with OpenSim inverse kinematics",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.add_argument(
        "--data", type=Path, default=None, help="shared data folder (default: ../shared/data)"
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = args.data or default_data_dir()
    try:
        res = conventions_check(data)
    except (OpenSimFileError, FileNotFoundError, KeyError, ValueError) as e:
        print(f"error: conventions-check: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(format_markdown(res))
    return 0 if res["ok"] else 1


def _markers(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    trc = read_trc(path)
    xyz = opensim_to_lab(trc.xyz, trc.metres_per_unit)
    return trc.time, {n: xyz[:, i] for i, n in enumerate(trc.markers)}


def _rows(t: np.ndarray, angles: np.ndarray, ik, sel: np.ndarray) -> list[dict[str, Any]]:
    rows = []
    for ours_t, col_t, sign, why in OPENSIM_GAIT2354_MAP:
        sides = SIDES[::-1] if "{s}" in ours_t else ("",)
        for s in sides:
            ours_name, col = ours_t.replace("{s}", s), col_t.replace("{s}", s)
            ours = np.interp(ik.time[sel], t, angles[:, ANGLE_INDEX[ours_name]])
            ref = sign * ik.column(col)[sel]
            c = compare_series(ours, ref)
            if c["ref_range"] < MIN_RANGE_DEG:
                verdict = "range too small to judge"
            elif c["r"] > R_AGREE:
                verdict = "agrees"
            elif c["r"] < -R_AGREE:
                verdict = "SIGN DIFFERS"
            else:
                verdict = "weak agreement"
            rows.append(
                {"angle": ours_name, "opensim": col, "sign": sign, "why": why, **c,
                 "verdict": verdict}
            )  # fmt: skip
    return rows


def conventions_check(data_dir: Path) -> dict[str, Any]:
    """Run the whole check on the shared data folder; a JSON-able dict (see format_markdown)."""
    folder = Path(data_dir) / FOLDER
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} not found (the shared real-data folder)")
    ik = read_mot(folder / "subject01_walk1_ik.mot")
    if ik.in_degrees is False:
        raise ValueError(f"{ik.path}: angles are in radians; expected degrees")
    _, static = _markers(folder / "subject01_static.trc")
    tw, walk = _markers(folder / "walk_free_01.trc")
    sel = (ik.time >= tw[0] - 1e-9) & (ik.time <= tw[-1] + 1e-9)
    if sel.sum() < 10:
        raise ValueError(f"{ik.path} and walk_free_01.trc overlap in only {sel.sum()} samples")

    frames = frames_from_markers(walk, tw, CALIBRATED, static=static)
    calibrated = _rows(tw, frames_to_angles(frames), ik, sel)

    # the LATERAL protocol on the same trial: lateral knee/ankle markers carried from the
    # static trial by the clusters, no medial markers, default joint widths
    lateral_walk = dict(walk)
    for S in ("R", "L"):
        for seg, targets in (("Thigh", (f"{S}.Knee.Lat",)), ("Shank", (f"{S}.Ankle.Lat",))):
            cluster = tuple(f"{S}.{seg}.{p}" for p in ("Upper", "Front", "Rear"))
            lateral_walk.update(carry_markers(static, walk, cluster, targets))
    lat_protocol = replace(
        LATERAL,
        name="lateral markers + half-width offsets (subject01, lateral markers only)",
        sacrum=CALIBRATED.sacrum,
        thigh_cluster=CALIBRATED.thigh_cluster,
        shank_cluster=CALIBRATED.shank_cluster,
        knee_lat=CALIBRATED.knee_lat,
        ankle_lat=CALIBRATED.ankle_lat,
        toe=CALIBRATED.toe,
    )
    lat_frames = frames_from_markers(lateral_walk, tw, lat_protocol)
    lateral = _rows(tw, frames_to_angles(lat_frames), ik, sel)

    pelvis_tx = ik.column("pelvis_tx")
    other = _markers_walk_check(folder)
    judged = [
        r
        for r in calibrated
        if r["angle"].startswith(("hip_", "knee_", "ankle_")) and r["ref_range"] >= MIN_RANGE_DEG
    ]
    return {
        "ok": all(r["r"] > R_AGREE for r in judged if "flexion" in r["angle"] or "ankle" in r["angle"])
        and not any(r["r"] < -R_AGREE for r in calibrated + lateral),
        "reference": {
            "ik": str(ik.path.name),
            "markers": "walk_free_01.trc + subject01_static.trc",
            "overlap_s": [float(ik.time[sel][0]), float(ik.time[sel][-1])],
            "samples": int(sel.sum()),
            "ik_pelvis_tx_range_m": float(np.ptp(pelvis_tx)),
        },
        "calibrated": {"protocol": CALIBRATED.name, "rows": calibrated},
        "lateral": {"protocol": lat_protocol.name, "rows": lateral},
        "markers_walk": other,
    }  # fmt: skip


def _markers_walk_check(folder: Path) -> dict[str, Any]:
    """markers_walk.trc: show it is another trial and check its stride against the norms."""
    from fusion.normative import load_default_normative

    t, walk = _markers(folder / "markers_walk.trc")
    sacrum = 0.5 * (walk["R.PSIS"] + walk["L.PSIS"])
    travel = float(np.linalg.norm(sacrum[-1, :2] - sacrum[0, :2]))
    angles = frames_to_angles(frames_from_markers(walk, t, LATERAL))
    grf = read_mot(folder / "grf_walk.mot")
    hs_r, _ = contact_events(grf.time, grf.column("ground_force_r_vy"))
    out: dict[str, Any] = {"pelvis_travel_m": travel, "rows": []}
    if len(hs_r) < 2:
        return out
    t0, t1 = float(hs_r[0]), float(hs_r[1])
    out["stride_s"] = [t0, t1]
    curves = stride_curves(t, angles, t0, t1, "r")
    norm = load_default_normative()
    mean = norm.periodic_mean("Free")
    for v, var in enumerate(GDI_VARIABLES):
        ref = mean[norm.channel_index(var)]
        c = compare_series(curves[v], ref)
        out["rows"].append({"angle": f"{var}" + ("" if var.startswith("pelvis") else "_r"), **c})
    return out


def _table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| our angle | OpenSim column (× sign) | r | offset ° | RMSE ° | RMSE − offset ° "
        "| IK range ° | verdict |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['angle']} | {r['opensim']} (×{r['sign']:+.0f}) | {r['r']:.2f} | "
            f"{r['offset']:+.1f} | {r['rmse']:.1f} | {r['rmse_centred']:.1f} | "
            f"{r['ref_range']:.1f} | {r['verdict']} |"
        )
    return lines


def format_markdown(res: dict[str, Any]) -> str:
    ref = res["reference"]
    out = [
        f"Reference: {ref['ik']} (OpenSim Gait2354 IK) vs our angles from {ref['markers']}, "
        f"{ref['samples']} samples over {ref['overlap_s'][0]:.3f}–{ref['overlap_s'][1]:.3f} s "
        f"(IK pelvis_tx range {ref['ik_pelvis_tx_range_m']:.3f} m: walking in place).",
        "",
        f"### Protocol: {res['calibrated']['protocol']}",
        "",
        *_table(res["calibrated"]["rows"]),
        "",
        f"### Protocol: {res['lateral']['protocol']}",
        "",
        *_table(res["lateral"]["rows"]),
        "",
        "### Sign mapping (OpenSim Gait2354 → ours)",
        "",
        "| our angle | OpenSim column | sign | why |",
        "|---|---|---|---|",
        *(f"| {a} | {c} | {s:+.0f} | {w} |" for a, c, s, w in OPENSIM_GAIT2354_MAP),
        "",
    ]
    mw = res["markers_walk"]
    out.append(
        f"### markers_walk.trc (another trial: the pelvis travels {mw['pelvis_travel_m']:.2f} m)"
    )
    if mw.get("rows"):
        s0, s1 = mw["stride_s"]
        out += [
            "",
            f"Right stride {s0:.3f}–{s1:.3f} s (heel strikes from grf_walk.mot, 20 N) vs the "
            "Schwartz 2008 free-speed mean:",
            "",
            "| our angle | r | offset ° | RMSE − offset ° | normative range ° |",
            "|---|---|---|---|---|",
        ]
        for r in mw["rows"]:
            out.append(
                f"| {r['angle']} | {r['r']:.2f} | {r['offset']:+.1f} | "
                f"{r['rmse_centred']:.1f} | {r['ref_range']:.1f} |"
            )
    out.append("")
    out.append("overall: " + ("conventions agree" if res["ok"] else "CHECK FAILED"))
    return "\n".join(out)
