"""`gait-stream plot-gait`: generated hip/knee/ankle curves over the normative bands.

    gait-stream plot-gait [--out docs/gait_curves.png] [--subjects 4] [--seed 7]

For each Schwartz 2008 speed class a few subjects are sampled and walk (fusion.activities:
the whole engine, planted feet included); each subject's left strides are time-normalised
between its labelled heel strikes and averaged. The curves are drawn over the normative
mean ± 1 SD band (and ±2 SD, lighter) of the same speed. Uses matplotlib's Agg backend.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

from services.commands.argtypes import at_least_1

__all__ = ["plot_gait", "register", "run", "stride_average"]

PANELS = (
    ("hip_flexion", "Hip flexion (+) / extension"),
    ("knee_flexion", "Knee flexion"),
    ("ankle_dorsiflexion", "Ankle dorsiflexion (+) / plantarflexion"),
)


def stride_average(
    t: np.ndarray, y: np.ndarray, strikes: list[float], points: int = 51
) -> np.ndarray:
    """Mean of y over the strides between consecutive heel strikes, resampled to 0–100 %."""
    pct = np.linspace(0.0, 1.0, points)
    rows = [np.interp(a + pct * (b - a), t, y) for a, b in itertools.pairwise(strikes)]
    if not rows:
        raise ValueError("stride_average: need at least two heel strikes")
    return np.mean(rows, axis=0)


def plot_gait(
    out: Path, subjects: int = 4, seed: int = 7, duration: float = 12.0
) -> dict[str, float]:
    """Write the figure; returns the share of plotted points inside ±1 SD and ±2 SD."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fusion.activities import MotionSpec, generate_motion
    from fusion.body import BodyModel, BodyShape
    from fusion.normative import PCT, SPEEDS, load_default_normative
    from fusion.skeleton import DOF_INDEX

    normative = load_default_normative()
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(
        len(PANELS), len(SPEEDS), figsize=(3.2 * len(SPEEDS), 2.6 * len(PANELS)), sharex=True
    )
    inside1 = inside2 = total = 0
    for j, speed in enumerate(SPEEDS):
        curves = []
        for _ in range(subjects):
            body = BodyModel(BodyShape(height=float(rng.uniform(1.5, 1.9))))
            spec = MotionSpec(activity="walk", duration=duration, speed=speed)
            m = generate_motion(spec, body, rng, normative)
            strikes = [t for t, lab in m.labels.events if lab == "heel_strike_l"]
            curves.append(
                [stride_average(m.t, m.dofs[:, DOF_INDEX[f"{n}_l"]], strikes) for n, _ in PANELS]
            )
        for i, (name, title) in enumerate(PANELS):
            ax = axes[i, j]
            mean, sd = normative.curve(speed, name)
            ax.fill_between(PCT, mean - 2 * sd, mean + 2 * sd, color="0.9", lw=0)
            ax.fill_between(PCT, mean - sd, mean + sd, color="0.75", lw=0, label="mean ± 1 SD")
            ax.plot(PCT, mean, color="k", lw=1.0, label="normative mean")
            for k, c in enumerate(curves):
                ax.plot(PCT, c[i], lw=1.2, label="generated" if k == 0 else None)
                dev = np.abs(c[i] - mean)
                inside1 += int(np.sum(dev <= sd))
                inside2 += int(np.sum(dev <= 2 * sd))
                total += len(mean)
            if i == 0:
                ax.set_title(speed)
            if j == 0:
                ax.set_ylabel(f"{title} (deg)", fontsize=8)
            if i == len(PANELS) - 1:
                ax.set_xlabel("gait cycle (%)")
            ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=7, loc="upper right")
    share1, share2 = inside1 / total, inside2 / total
    fig.suptitle(
        "Generated walking (left side, stride-averaged, one line per sampled subject) over "
        f"Schwartz 2008 TD bands — {100 * share1:.0f} % of points within ±1 SD, "
        f"{100 * share2:.0f} % within ±2 SD",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return {"within_1sd": share1, "within_2sd": share2}


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = subparsers.add_parser(
        "plot-gait",
        help="plot generated hip/knee/ankle curves over the normative bands (PNG)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", type=Path, default=Path("docs/gait_curves.png"), help="PNG path")
    p.add_argument("--subjects", type=at_least_1, default=4, help="subjects per speed class (>= 1)")
    p.add_argument("--seed", type=int, default=7, help="random seed")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        res = plot_gait(args.out, subjects=args.subjects, seed=args.seed)
    except (OSError, ValueError) as e:
        print(f"error: plot-gait: {e}", file=sys.stderr)
        return 2
    print(
        f"wrote {args.out}: {100 * res['within_1sd']:.0f} % of points within ±1 SD, "
        f"{100 * res['within_2sd']:.0f} % within ±2 SD"
    )
    return 0
