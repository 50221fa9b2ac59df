"""On-the-fly augmentation of training patches, reproducible per sample.

`Augmentation` is the `augment` callable of `loader.ShardDataset`: it gets one patch as numpy arrays (as
stored: float16 (C, P, P), uint8 (P, P); any dtypes work) and a generator that the loader seeds from (seed,
epoch, global index), so the result depends neither on which worker fetches the patch nor on whether the run was interrupted and resumed.
The operations: with `spectral_p`, a spectral perturbation (gain, offset, haze, blur, noise within
`spectral_ranges`) applied to the patch's reflectance (the normalisation inverted, the perturbation applied,
normalised again; elevation and pixels without data untouched; not in the thesis); then in the thesis's order:
flip along H, flip along W (each with `flip_p`), zero each channel with `channel_dropout_p`, and with `erase_p`
erase one square of side in `erase_size` (image 0, label 255 so loss and metrics ignore it; the thesis set the
label to background there). The spectral draws come after the thesis operations' draws, so with `spectral_p` 0
every patch is what it was before the spectral augmentation existed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from snowcloud import normalisation, spectral
from snowcloud.bands import BANDS
from snowcloud.labels import IGNORE_INDEX
from snowcloud.scene import REFLECTANCE_SCALE


@dataclass(frozen=True)
class Augmentation:
    """Spectral perturbation, flips, channel dropout and random erasing as `training.augmentation` says.

    The spectral perturbation needs the patches' channel names `bands` (the 13 L1C bands first, as in every
    shard) and their `normalisation_spec` (one with fixed constants, to be inverted)."""

    flip_p: float = 0.0
    channel_dropout_p: float = 0.0
    erase_p: float = 0.0
    erase_size: tuple[int, int] = (8, 128)
    spectral_p: float = 0.0
    spectral_ranges: spectral.SpectralRanges = field(default_factory=spectral.SpectralRanges)
    bands: tuple[str, ...] = ()
    normalisation_spec: Mapping[str, object] | None = None

    @classmethod
    def from_options(
        cls,
        options: Mapping[str, object],
        bands: Sequence[str] = (),
        normalisation_spec: Mapping[str, object] | None = None,
    ) -> Augmentation:
        """From `training.augmentation`; `bands` and `normalisation_spec` (a dataset's) when spectral p > 0."""
        low, high = options.get("erase_size", cls.erase_size)  # type: ignore[misc]
        if not 1 <= low <= high:
            raise ValueError(
                f"augmentation.erase_size must be [smallest, largest] with 1 <= smallest <= largest, got {[low, high]}"
            )
        spectral_options: Mapping[str, object] = options.get("spectral", {})  # type: ignore[assignment]
        spectral_p = float(spectral_options.get("p", 0.0))  # type: ignore[arg-type]
        if spectral_p:
            _check_spectral_inputs(bands, normalisation_spec)
        return cls(
            flip_p=float(options.get("flip_p", 0.0)),  # type: ignore[arg-type]
            channel_dropout_p=float(options.get("channel_dropout_p", 0.0)),  # type: ignore[arg-type]
            erase_p=float(options.get("erase_p", 0.0)),  # type: ignore[arg-type]
            erase_size=(int(low), int(high)),
            spectral_p=spectral_p,
            spectral_ranges=spectral.SpectralRanges.from_options(spectral_options),
            bands=tuple(bands),
            normalisation_spec=normalisation_spec,
        )

    @property
    def active(self) -> bool:
        return bool(self.flip_p or self.channel_dropout_p or self.erase_p or self.spectral_p)

    def perturbed(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """The image after the spectral perturbation (drawn from `rng` whatever `spectral_p`, applied with it):
        L1C bands to reflectance, perturbed, normalised again; other channels and no-data pixels (0 in every
        channel and labelled 255) as they were; the image's dtype kept."""
        chosen = rng.random() < self.spectral_p
        perturbation = self.spectral_ranges.draw(rng, len(BANDS))
        if not chosen:
            return image
        n = len(BANDS)
        valid = ~((label == IGNORE_INDEX) & (image == 0).all(axis=0))
        reflectance = normalisation.band_values(self.normalisation_spec, image[:n]) / np.float32(REFLECTANCE_SCALE)
        values = spectral.perturb(reflectance, BANDS, perturbation, rng, valid) * np.float32(REFLECTANCE_SCALE)
        out = image.copy()
        out[:n] = normalisation.apply(self.normalisation_spec, values, valid, {}, source="the spectral augmentation")
        return out

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augmented copies of a (C, H, W) image and its (H, W) label; the inputs are left untouched."""
        channels, height, width = image.shape
        # Draw every number up front, in a fixed layout, whatever the probabilities.
        flip_h, flip_w, erase, *dropped = rng.random(3 + channels)
        side = min(int(rng.integers(self.erase_size[0], self.erase_size[1] + 1)), height, width)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
        if self.spectral_p:
            image = self.perturbed(image, label, rng)

        if flip_h < self.flip_p:
            image, label = image[:, ::-1], label[::-1]
        if flip_w < self.flip_p:
            image, label = image[:, :, ::-1], label[:, ::-1]
        image, label = image.copy(), label.copy()
        image[np.asarray(dropped) < self.channel_dropout_p] = 0
        if erase < self.erase_p:
            image[:, top : top + side, left : left + side] = 0
            label[top : top + side, left : left + side] = IGNORE_INDEX
        return image, label


def _check_spectral_inputs(bands: Sequence[str], spec: Mapping[str, object] | None) -> None:
    """ValueError unless patches of `bands` normalised with `spec` can be turned back into reflectance."""
    if tuple(bands[: len(BANDS)]) != BANDS:
        raise ValueError(
            f"augmentation.spectral needs the {len(BANDS)} L1C bands first in the patches, got {list(bands)}"
        )
    if spec is None or not normalisation.invertible(dict(spec)):
        name = None if spec is None else spec.get("name")
        raise ValueError(
            f"augmentation.spectral.p > 0 needs a normalisation that can be inverted, the dataset's is {name!r}: "
            "use snowcloud-v1, dynamic-world-percentile or legacy-dn10000, or set augmentation.spectral.p to 0"
        )
