"""Faults a job must survive without leaving damage: kill -9 mid-write (the next run removes every temporary the
killed one made) and a full disk (a failed job, never a damaged file that counts as finished)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import torch
from safe_factory import constant_bands, make_product
from test_infer import OPTIONS, save_checkpoint, synthetic_values, write_scene

from snowcloud import model as model_registry
from snowcloud import normalisation
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.infer import predict_scene
from snowcloud.preprocess import preprocess_scene

CLIPPED = {"dem": False, "block_rows": 60, "clip": {"method": "percentile", "percentiles": [1.0, 99.0]}}


def killed_at(module: str, attribute: str, call: str, tmp_path: Path) -> None:
    """Run `call` in a fresh Python that kills itself with SIGKILL when it reaches `module`'s `attribute`
    (a function or "Class.method"), as the out-of-memory killer or Slurm would: no cleanup code runs."""
    script = textwrap.dedent(f"""
        import functools, importlib, os, signal
        *parents, name = {attribute!r}.split(".")
        owner = functools.reduce(getattr, parents, importlib.import_module({module!r}))
        setattr(owner, name, lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL))
        {call}
    """)
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert result.returncode == -9, result.stderr[-3000:]


def test_a_preprocess_killed_while_assembling_leaves_temporaries_that_the_next_run_removes(tmp_path):
    safe = make_product(tmp_path / "raw", constant_bands(120))
    output = tmp_path / "scenes" / "20220201T102209.tif"
    killed_at("snowcloud.cog", "CogWriter.finish",
              f"from snowcloud.preprocess import preprocess_scene; preprocess_scene({str(safe)!r}, None, {str(output)!r}, {CLIPPED!r})",
              tmp_path)  # fmt: skip
    left = sorted(path.name for path in output.parent.iterdir())
    assert any(".level0.part0.tif" in name for name in left) and any(name.endswith(".strips.tif") for name in left), left
    preprocess_scene(safe, None, output, CLIPPED)
    assert sorted(output.parent.iterdir()) == [output]


def test_an_inference_killed_before_its_cogs_leaves_a_scratch_folder_that_the_next_run_removes(tmp_path):
    bands = [*BANDS, ELEVATION]
    torch.manual_seed(0)
    model_args = {"in_channels": len(bands), "n_classes": 4, "base_channels": 4}
    network = model_registry.build_model("unet", **model_args)
    model_path = save_checkpoint(tmp_path / "model.pt", network, "unet", model_args, bands, normalisation.spec("snowcloud-v1"))
    scene = write_scene(tmp_path / "scenes" / "20210116T102351.tif", synthetic_values(64, 64))
    output = tmp_path / "predictions" / "20210116T102351.tif"
    options = {**OPTIONS, "tta": False}
    killed_at("snowcloud.infer", "write_cog",
              f"from snowcloud.infer import predict_scene; predict_scene({str(model_path)!r}, {str(scene)!r}, {str(output)!r}, {options!r})",
              tmp_path)  # fmt: skip
    assert [path.name for path in output.parent.iterdir() if path.is_dir()], "the killed run left its scratch folder"
    predict_scene(str(model_path), str(scene), str(output), options)
    assert sorted(path.name for path in output.parent.iterdir()) == ["20210116T102351.tif", "20210116T102351_proba.tif"]
