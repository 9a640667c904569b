"""`gait-stream evaluate`: every estimator on held-out synthetic clips (fusion.evaluation).

    gait-stream evaluate --json                 # full run (~15 min on 2 cores), JSON on stdout
    gait-stream evaluate --quick --out runs/ev  # test-sized; writes evaluation.json + plot
    gait-stream evaluate --speed                # per-tick model time of the neural models
    gait-stream evaluate --models fusionnet new=runs/train_fusionnet/fusionnet.pt
                                                # a candidate beside the shipped weights

Models whose weights are not there are reported as missing, not an error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from services.commands.argtypes import at_least_1

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "evaluate",
        help="accuracy, noise sensitivity and robustness of the estimators on held-out clips",
        description="Evaluate estimators on held-out synthetic clips (seeds >= 1,000,000).",
    )
    p.add_argument("--json", action="store_true", help="print the report as one JSON object")
    p.add_argument("--quick", action="store_true", help="a small plan (< 2 min)")
    p.add_argument(
        "--models",
        nargs="+",
        help="estimators (default: all neural + classical); LABEL=PATH scores the neural model "
        "file PATH as LABEL (e.g. fusionnet new=runs/train_fusionnet/fusionnet.pt)",
    )
    p.add_argument("--out", help="directory for evaluation.json and noise_sensitivity.png")
    p.add_argument(
        "--workers", type=at_least_1, default=min(2, os.cpu_count() or 1), help="processes (2)"
    )
    p.add_argument(
        "--backend",
        choices=("auto", "torch", "onnx"),
        default="torch",
        help="neural step back-end for the evaluation (same numbers; default torch)",
    )
    p.add_argument(
        "--speed",
        action="store_true",
        help="instead: model time per tick (p50/p99) for 1, 4, 16 subjects, torch vs ONNX, "
        "and a full-window recompute",
    )
    p.add_argument("--ticks", type=at_least_1, default=300, help="--speed: ticks timed per row")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _fmt(v: Any) -> str:
    return "   -" if v is None else f"{v:5.2f}"


def _table(report: dict[str, Any]) -> str:
    from fusion.evaluation import PAIRED_KEY

    lines = ["model              lower  upper  cover  normal  patho  on-cl   status"]
    for m, e in report["models"].items():
        if e.get("status") != "ok":
            lines.append(f"{m:<18} {'':>28} missing: {e.get('reason', '')[:60]}")
            continue
        r, c = e["rmse_deg"], e["coverage"]
        paired = e.get(PAIRED_KEY, {}).get("lower")
        lines.append(
            f"{m:<18} {_fmt(r['lower'])}  {_fmt(r['upper'])}  {c['lower']:5.2f}  "
            f"{_fmt(e['normal']['lower'])}   {_fmt(e['pathological']['lower'])}  "
            f"{_fmt(paired)}   ok"
        )
    lines.append("(on-cl: lower on only the frames and angles the classical estimator answered)")
    for _sweep, res in report["noise"].items():
        lines.append(f"\nnoise: {res['what']}  levels {res['levels']} (lower-limb RMSE, mean±sd)")
        for m, r in res["models"].items():
            cells = "  ".join(
                f"{_fmt(a)}±{_fmt(b).strip()}"
                for a, b in zip(r["lower_mean"], r["lower_sd"], strict=True)
            )
            lines.append(f"  {m:<18} {cells}")
    rob = report["robustness"]
    lines.append("\nrobustness (lower-limb RMSE / coverage): " + ", ".join(rob["conditions"]))
    for m, r in rob["models"].items():
        cells = "  ".join(f"{_fmt(v['lower'])}/{v['coverage_lower']:.2f}" for v in r.values())
        lines.append(f"  {m:<18} {cells}")
    lines.append(f"\n{report['timing']}")
    return "\n".join(lines)


def _speed(args: argparse.Namespace) -> int:
    from fusion.estimators.neural import NeuralEstimator, measure_speed
    from fusion.evaluation import NEURAL_NAMES, model_spec

    out: dict[str, Any] = {}
    for spec in args.models or NEURAL_NAMES:
        try:
            m, opts = model_spec(spec)
            est = NeuralEstimator(opts.get("weights", m), backend=args.backend)
        except Exception as e:
            out[spec] = {"status": "missing", "reason": f"{type(e).__name__}: {e}"}
            continue
        out[m] = {"info": est.info(), "rows": measure_speed(est, ticks=args.ticks)}
    if args.json:
        print(json.dumps(out, indent=1))
        return 0
    for m, r in out.items():
        if "rows" not in r:
            print(f"{m}: missing ({r['reason']})")
            continue
        print(f"{m} on {r['info']['device']}, chosen back-end {r['info']['backend']}")
        for row in r["rows"]:
            print(
                f"  {row['subjects']:>3} subjects  {row['mode']:<32} "
                f"p50 {row['p50_ms']:7.2f} ms  p99 {row['p99_ms']:7.2f} ms"
            )
    return 0


def run(args: argparse.Namespace) -> int:
    from fusion.evaluation import MODEL_NAMES, EvalPlan, evaluate, is_neural, plot_noise

    if args.speed:
        return _speed(args)
    models = tuple(args.models or MODEL_NAMES)
    plan = EvalPlan.quick() if args.quick else EvalPlan()
    options = {
        m.split("=", 1)[0].strip(): {"backend": args.backend}
        for m in models
        if "=" in m or is_neural(m)
    }
    bar = None
    if not args.no_progress:
        from tqdm import tqdm

        bar = tqdm(total=len(plan.units()), unit="unit", desc="evaluate", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.n = done
            bar.refresh()

    try:
        report = evaluate(models, plan, workers=args.workers, options=options, progress=progress)
    except ValueError as e:
        print(f"gait-stream evaluate: {e}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "evaluation.json").write_text(json.dumps(report, indent=1))
        plot_noise(report, str(out / "noise_sensitivity.png"))
    print(json.dumps(report) if args.json else _table(report))
    return 0
