"""Perturbations of top-of-atmosphere reflectance by what real L1C products vary by, and their random draws.

One implementation, used twice: the training augmentation (`augment.Augmentation`, on a shard patch turned back
into reflectance) and the robustness benchmark (`benchmarks/bench_robustness.py`, on a scene raster). Each
function takes the reflectance bands (C, H, W) float32 with their names and returns a new array; channels that
are not L1C bands (the elevation) are never given to them. The model of an observation, applied in this order:

1. haze: an additive path reflectance ``h (lambda / 490 nm) ** -alpha`` (stronger in the blue) over a surface
   seen through it, ``rho (1 - h_lambda) + h_lambda``; B10 (1375 nm) is left alone, boundary-layer aerosol lies
   under the water vapour that absorbs that band (why it is the cirrus band);
2. the sensor's blur: a Gaussian point spread function of `sigma` pixels (integrated over each pixel), averaged
   over valid pixels only;
3. calibration: a gain and an offset per band;
4. noise: Gaussian, of `std` reflectance, independent per pixel and band.

docs/training.md ("Spectral augmentation") gives the ranges of `SpectralRanges` and where they come from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

import numpy as np

from snowcloud.bands import WAVELENGTH_NM

HAZE_REFERENCE_NM = 490.0  # haze strength is the path reflectance added at this wavelength (B02)
HAZE_FREE_BANDS = ("B10",)


@dataclass(frozen=True)
class Perturbation:
    """What one observation does to a scene's reflectance (the identity by default)."""

    gains: Sequence[float] | float = 1.0  # per band, or one for all
    offsets: Sequence[float] | float = 0.0  # reflectance, per band or one for all
    haze: float = 0.0  # path reflectance at HAZE_REFERENCE_NM
    haze_exponent: float = 1.3
    blur_sigma: float = 0.0  # pixels
    noise_std: float = 0.0  # reflectance


def haze_profile(bands: Sequence[str], haze: float, exponent: float) -> np.ndarray:
    """float32 (C,): the path reflectance haze adds to each band (0 for HAZE_FREE_BANDS)."""
    wavelengths = np.asarray([WAVELENGTH_NM[band] for band in bands], dtype=np.float64)
    profile = haze * (wavelengths / HAZE_REFERENCE_NM) ** -exponent
    profile[[band in HAZE_FREE_BANDS for band in bands]] = 0.0
    return profile.astype(np.float32)


def add_haze(reflectance: np.ndarray, bands: Sequence[str], haze: float, exponent: float) -> np.ndarray:
    """The scene seen through haze of path reflectance `haze` at 490 nm: rho (1 - h) + h per band."""
    path = haze_profile(bands, haze, exponent)[:, None, None]
    return reflectance * (1 - path) + path


def gaussian_kernel(sigma: float) -> np.ndarray:
    """float32 1-D Gaussian of `sigma` pixels integrated over each pixel (a detector integrates its area, so
    sigma well under a pixel still spreads light to the neighbours), out to 3 sigma, at least one pixel either
    side, summing to 1."""
    radius = max(1, int(np.ceil(3 * sigma)))
    edges = (np.arange(-radius, radius + 2) - 0.5) / (sigma * math.sqrt(2))
    kernel = np.diff([math.erf(edge) for edge in edges])
    return (kernel / kernel.sum()).astype(np.float32)


def _convolve_axis(values: np.ndarray, kernel: np.ndarray, axis: int) -> np.ndarray:
    """values (..., H, W) convolved along `axis` (-2 or -1) with a symmetric kernel, zero outside."""
    radius = len(kernel) // 2
    pad = [(0, 0)] * values.ndim
    pad[axis] = (radius, radius)
    padded = np.pad(values, pad)
    length = values.shape[axis]
    out = np.zeros_like(values)
    term = np.empty_like(values)
    for tap, weight in enumerate(kernel):
        window = [slice(None)] * values.ndim
        window[axis] = slice(tap, tap + length)
        out += np.multiply(padded[tuple(window)], weight, out=term)
    return out


def blur(reflectance: np.ndarray, sigma: float, valid: np.ndarray | None = None) -> np.ndarray:
    """Every band convolved with a Gaussian PSF of `sigma` pixels; only valid pixels contribute (normalised
    convolution, so no-data and the array's edges do not darken their neighbours). sigma 0 is a copy."""
    if sigma <= 0:
        return reflectance.copy()
    kernel = gaussian_kernel(sigma)
    weight = np.ones(reflectance.shape[1:], np.float32) if valid is None else valid.astype(np.float32)
    stacked = np.concatenate([reflectance * weight, weight[None]])
    smooth = _convolve_axis(_convolve_axis(stacked, kernel, -2), kernel, -1)
    out = np.divide(smooth[:-1], smooth[-1], out=np.zeros_like(reflectance), where=smooth[-1] > 0)
    return out if valid is None else np.where(valid, out, reflectance)


def calibrate(reflectance: np.ndarray, gains: Sequence[float] | float, offsets: Sequence[float] | float) -> np.ndarray:
    """reflectance x gain + offset, per band (a sequence of one value per band) or one value for all."""
    gains = np.asarray(gains, dtype=np.float32).reshape(-1, 1, 1)
    offsets = np.asarray(offsets, dtype=np.float32).reshape(-1, 1, 1)
    return reflectance * gains + offsets


def add_noise(reflectance: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise of `std` reflectance added to every value."""
    if std <= 0:
        return reflectance.copy()
    return reflectance + np.float32(std) * rng.standard_normal(reflectance.shape, dtype=np.float32)


def perturb(
    reflectance: np.ndarray,
    bands: Sequence[str],
    perturbation: Perturbation,
    rng: np.random.Generator,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Haze, blur, gain and offset, noise (the order of the module's docstring) on float32 reflectance (C, H, W)
    of the named bands; `rng` draws the noise; `valid` (H, W) the pixels that hold data (all if None)."""
    if len(bands) != len(reflectance):
        raise ValueError(f"{len(reflectance)} reflectance bands but {len(bands)} band names")
    out = add_haze(np.asarray(reflectance, dtype=np.float32), bands, perturbation.haze, perturbation.haze_exponent)
    out = blur(out, perturbation.blur_sigma, valid)
    out = calibrate(out, perturbation.gains, perturbation.offsets)
    return add_noise(out, perturbation.noise_std, rng)


@dataclass(frozen=True)
class SpectralRanges:
    """Uniform ranges [low, high] that `draw` takes a Perturbation from (`training.augmentation.spectral`)."""

    gain: tuple[float, float] = (0.8, 1.2)  # one factor for all bands (illumination, view angle)
    band_gain: tuple[float, float] = (0.95, 1.05)  # and one per band (calibration, S2A/S2B)
    offset: tuple[float, float] = (-0.02, 0.02)  # per band, reflectance
    haze: tuple[float, float] = (0.0, 0.04)  # path reflectance at 490 nm
    haze_exponent: tuple[float, float] = (1.0, 4.0)  # aerosol (about 1) to Rayleigh (4)
    blur_sigma: tuple[float, float] = (0.0, 1.0)  # pixels
    noise_std: tuple[float, float] = (0.0, 0.005)  # reflectance

    @classmethod
    def from_options(cls, options: Mapping[str, object], key: str = "augmentation.spectral") -> SpectralRanges:
        ranges = {}
        for field in fields(cls):
            low, high = (float(value) for value in options.get(field.name, getattr(cls, field.name)))  # type: ignore[union-attr]
            if not low <= high:
                raise ValueError(f"{key}.{field.name} must be [low, high] with low <= high, got {[low, high]}")
            ranges[field.name] = (low, high)
        return cls(**ranges)

    def draw(self, rng: np.random.Generator, n_bands: int) -> Perturbation:
        """A perturbation with every number uniform in its range; the draws always take the same layout."""
        common, haze, exponent, sigma, std = rng.uniform(
            *np.transpose([self.gain, self.haze, self.haze_exponent, self.blur_sigma, self.noise_std])
        )
        band_gains = rng.uniform(*self.band_gain, n_bands)
        offsets = rng.uniform(*self.offset, n_bands)
        return Perturbation(
            gains=(common * band_gains).tolist(),
            offsets=offsets.tolist(),
            haze=float(haze),
            haze_exponent=float(exponent),
            blur_sigma=float(sigma),
            noise_std=float(std),
        )
