"""On-the-fly augmentation of training patches, reproducible per sample.

Every random choice for a patch comes from its own generator seeded by (seed, epoch, global index), so the
result does not depend on which loader worker fetches the patch, nor on whether the run was interrupted
and resumed. The operations (thesis order): flip along H, flip along W (each with `flip_p`), zero each
channel with `channel_dropout_p`, and with `erase_p` erase one square of side in `erase_size` (image 0,
label 255 so the loss and metrics ignore it; the thesis set the label to background).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from snowcloud.bands import IGNORE_INDEX

Item = tuple[torch.Tensor, torch.Tensor]


def sample_rng(seed: int, epoch: int, index: int) -> np.random.Generator:
    """The generator for one patch in one epoch; the same (seed, epoch, index) always gives the same stream."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed % 2**64, epoch, index])))


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

    def __call__(self, image: torch.Tensor, label: torch.Tensor, rng: np.random.Generator) -> Item:
        """Augmented copies of a (C, H, W) image and its (H, W) label; the inputs are left untouched."""
        channels, height, width = image.shape
        # Draw every number up front, in a fixed layout, whatever the probabilities.
        flip_h, flip_w, erase, *dropped = rng.random(3 + channels)
        side = min(int(rng.integers(self.erase_size[0], self.erase_size[1] + 1)), height, width)
        top, left = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))

        image, label = image.clone(), label.clone()
        if flip_h < self.flip_p:
            image, label = image.flip(-2), label.flip(-2)
        if flip_w < self.flip_p:
            image, label = image.flip(-1), label.flip(-1)
        image[torch.from_numpy(np.asarray(dropped) < self.channel_dropout_p)] = 0
        if erase < self.erase_p:
            image[:, top : top + side, left : left + side] = 0
            label[top : top + side, left : left + side] = IGNORE_INDEX
        return image, label


class EpochItems(Dataset):
    """Items addressed by (epoch, index): `dataset[index]`, augmented with the generator of (seed, epoch, index).

    A batch sampler yields these keys, so workers need no shared epoch counter and the augmentation of every
    patch is fixed by the seed alone.
    """

    def __init__(self, dataset: Dataset, augmentation: Augmentation | None = None, seed: int = 0) -> None:
        self.dataset = dataset
        self.augmentation = augmentation if augmentation is not None and augmentation.active else None
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: Sequence[int]) -> Item:
        epoch, index = key
        image, label = self.dataset[index]
        if self.augmentation is None:
            return image, label
        return self.augmentation(image, label, sample_rng(self.seed, epoch, index))
