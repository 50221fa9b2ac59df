"""Where a network runs and in which precision: the `device` and `amp` settings of training and inference."""

from __future__ import annotations

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(requested: str, key: str) -> torch.device:
    """`auto` -> cuda when PyTorch sees a GPU, else cpu; `cuda` without one is an error naming the setting `key`."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            f"{key} is 'cuda' but PyTorch sees no GPU (CUDA device) on this machine: use 'auto' or 'cpu'"
        )
    return torch.device(requested)


def autocast_dtype(amp: bool | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype an `amp` setting means on `device` (None: float32). `true` is bf16 where the GPU
    supports it, else fp16; `bf16` / `fp16` choose; a CPU always runs float32."""
    if device.type != "cuda" or amp is False:
        return None
    if amp is True:
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return AMP_DTYPES[amp]


def precision_name(dtype: torch.dtype | None) -> str:
    return "float32" if dtype is None else str(dtype).removeprefix("torch.")
