"""Training losses on logits (B, K, H, W) and labels (B, H, W); pixels labelled `ignore_index` count for nothing.

- `thesis-bce`: the thesis loss, sigmoid BCE-with-logits on one-hot targets with a per-class `pos_weight`,
  averaged over the K channels of every valid pixel (the thesis also averaged over its 255 pixels, which had
  all-zero targets; we leave them out), or summed (`reduction="sum"`, the thesis up to 202ea7d).
- `thesis-bce-on-softmax`: 913b2a3's quirk, the same BCE-with-logits applied to the softmax of the logits (its
  network returned the softmax only), so each "logit" lies in (0, 1) and sigmoid(p) in (0.5, 0.73).
- `ce-dice`: class-weighted cross-entropy (averaged like PyTorch's, by the weights of the valid pixels' classes)
  plus `dice_weight` times the soft Dice loss 1 − mean over classes of Dice(softmax, one-hot).

Both are computed in float32 whatever the autocast precision, and without a host synchronisation: a batch
without any valid pixel gives a loss of 0 (and zero gradients) instead of NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from snowcloud.labels import IGNORE_INDEX

LOSSES = ("ce-dice", "thesis-bce", "thesis-bce-on-softmax")
REDUCTIONS = ("mean", "sum")
# Added to the numerator and denominator of the soft Dice: a class absent from target and prediction scores 1.
DICE_SMOOTHING = 1.0


def one_hot(label: torch.Tensor, n_classes: int) -> torch.Tensor:
    """(B, H, W) class ids -> (B, K, H, W) float one-hot; pixels outside 0..K-1 (e.g. 255) are all zero."""
    classes = torch.arange(n_classes, device=label.device).view(1, n_classes, 1, 1)
    return (label.unsqueeze(1) == classes).float()


class ThesisBCELoss(nn.Module):
    """Sigmoid BCE-with-logits per class channel, `pos_weight` = class weights, mean (or sum) over valid
    pixels·K; with `on_softmax` applied to the softmax of the logits instead (913b2a3)."""

    def __init__(
        self,
        class_weights: Sequence[float],
        ignore_index: int = IGNORE_INDEX,
        reduction: str = "mean",
        on_softmax: bool = False,
    ) -> None:
        super().__init__()
        if reduction not in REDUCTIONS:
            raise ValueError(f"unknown loss reduction '{reduction}' (known: {', '.join(REDUCTIONS)})")
        self.register_buffer("pos_weight", torch.tensor(class_weights, dtype=torch.float32).view(-1, 1, 1))
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.on_softmax = on_softmax

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        n_classes = logits.shape[1]
        valid = (label != self.ignore_index).unsqueeze(1)
        inputs = logits.softmax(dim=1) if self.on_softmax else logits
        per_element = F.binary_cross_entropy_with_logits(
            inputs, one_hot(label, n_classes), pos_weight=self.pos_weight, reduction="none"
        )
        total = (per_element * valid).sum()
        return total if self.reduction == "sum" else total / (valid.sum() * n_classes).clamp_min(1)


class CrossEntropyDiceLoss(nn.Module):
    """Class-weighted cross-entropy + `dice_weight` · (1 − mean soft Dice), label `ignore_index` left out."""

    def __init__(
        self, class_weights: Sequence[float], dice_weight: float = 1.0, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        self.register_buffer("weight", torch.tensor(class_weights, dtype=torch.float32))
        self.dice_weight = dice_weight
        self.ignore_index = ignore_index

    def forward(self, logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        n_classes = logits.shape[1]
        valid = label != self.ignore_index
        safe_label = torch.where(valid, label, 0)
        per_pixel = F.cross_entropy(logits, safe_label, weight=self.weight, reduction="none") * valid
        cross_entropy = per_pixel.sum() / (self.weight[safe_label] * valid).sum().clamp_min(torch.finfo().tiny)
        if not self.dice_weight:
            return cross_entropy
        probabilities = logits.softmax(dim=1) * valid.unsqueeze(1)
        target = one_hot(label, n_classes)
        intersection = (probabilities * target).sum(dim=(0, 2, 3))
        total = probabilities.sum(dim=(0, 2, 3)) + target.sum(dim=(0, 2, 3))
        dice = (2 * intersection + DICE_SMOOTHING) / (total + DICE_SMOOTHING)
        return cross_entropy + self.dice_weight * (1 - dice.mean())


def build_loss(
    name: str,
    class_weights: Sequence[float],
    dice_weight: float = 1.0,
    ignore_index: int = IGNORE_INDEX,
    reduction: str = "mean",
) -> nn.Module:
    """The configured loss (`experiments.<name>.training.loss`, `loss_reduction`) with the dataset's class weights."""
    if name in ("thesis-bce", "thesis-bce-on-softmax"):
        return ThesisBCELoss(class_weights, ignore_index, reduction, on_softmax=name == "thesis-bce-on-softmax")
    if name == "ce-dice":
        return CrossEntropyDiceLoss(class_weights, dice_weight, ignore_index)
    raise ValueError(f"unknown loss '{name}' (known: {', '.join(LOSSES)})")
