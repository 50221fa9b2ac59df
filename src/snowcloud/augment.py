"""On-the-fly augmentation of training patches, reproducible per sample.

`Augmentation` is the `augment` callable of `loader.ShardDataset`: it gets one patch as numpy arrays (as
stored: float16 (C, P, P), uint8 (P, P); any dtypes work) and a generator that the loader seeds from (seed,
epoch, global index), so the result depends neither on which worker fetches the patch nor on whether the run was interrupted and resumed.
The operations (thesis order): flip along H, flip along W (each with `flip_p`), zero each channel with
`channel_dropout_p`, and with `erase_p` erase one square of side in `erase_size` (image 0, label 255 so loss
and metrics ignore it; the thesis set the label to background there).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from snowcloud.labels import IGNORE_INDEX


@dataclass(frozen=True)
class Augmentation:
    """Flips, channel dropout and random erasing with the probabilities of `training.augmentation`."""

    flip_p: float = 0.0
    channel_dropout_p: float = 0.0
    erase_p: float = 0.0
    erase_size: tuple[int, int] = (8, 128)

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> Augmentation:
        low, high = options.get("erase_size", cls.erase_size)  # type: ignore[misc]
        if not 1 <= low <= high:
            raise ValueError(
                f"augmentation.erase_size must be [smallest, largest] with 1 <= smallest <= largest, got {[low, high]}"
            )
        return cls(
            flip_p=float(options.get("flip_p", 0.0)),  # type: ignore[arg-type]
            channel_dropout_p=float(options.get("channel_dropout_p", 0.0)),  # type: ignore[arg-type]
            erase_p=float(options.get("erase_p", 0.0)),  # type: ignore[arg-type]
            erase_size=(int(low), int(high)),
        )

    @property
    def active(self) -> bool:
        return bool(self.flip_p or self.channel_dropout_p or self.erase_p)

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Augmented copies of a (C, H, W) image and its (H, W) label; the inputs are left untouched."""
        channels, height, width = image.shape
        # Draw every number up front, in a fixed layout, whatever the probabilities.
        flip_h, flip_w, erase, *dropped = rng.random(3 + channels)
        side = min(int(rng.integers(self.erase_size[0], self.erase_size[1] + 1)), height, width)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))

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
