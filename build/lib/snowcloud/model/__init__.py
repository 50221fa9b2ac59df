"""Segmentation architectures behind one config key (`experiments.<name>.model.architecture`)."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

from snowcloud.model.unet import UNet

ARCHITECTURES: dict[str, Callable[..., nn.Module]] = {"unet": UNet}


def build_model(architecture: str, in_channels: int, n_classes: int, **args: object) -> nn.Module:
    """A fresh network of the named architecture returning logits (B, n_classes, H, W)."""
    if architecture not in ARCHITECTURES:
        raise ValueError(f"unknown architecture '{architecture}' (known: {', '.join(sorted(ARCHITECTURES))})")
    try:
        return ARCHITECTURES[architecture](in_channels=in_channels, n_classes=n_classes, **args)
    except TypeError as error:
        raise ValueError(
            f"architecture '{architecture}' does not accept the arguments {sorted(args)}: {error}"
        ) from None


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters (what the thesis's model summaries print)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
