"""Where the device-dependent tests run: on the CPU always, and on a CUDA GPU in bf16 and fp16 autocast when
PyTorch sees one (skipped, with the reason, elsewhere: CI has no GPU; `benchmarks/gpu_check.sh` runs them)."""

import pytest
import torch

NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# (device, amp) as the `training` / `inference` settings take them
DEVICE_PRECISIONS = [
    pytest.param(("cpu", False), id="cpu"),
    pytest.param(("cuda", "bf16"), id="cuda-bf16", marks=NO_GPU),
    pytest.param(("cuda", "fp16"), id="cuda-fp16", marks=NO_GPU),
]
