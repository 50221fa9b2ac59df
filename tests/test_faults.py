"""Faults a job must survive without leaving damage: kill -9 mid-write (the next run removes every temporary the
killed one made) and a full disk (a failed job, never a damaged file that counts as finished)."""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import numpy as np
import pytest
import rasterio
import torch
from helpers.rasters import synthetic_scene, write_scene
from helpers.safe_factory import constant_bands, make_product

from snowcloud import cog, normalisation
from snowcloud import model as model_registry
from snowcloud.atomic import NoSpaceError, atomic_output
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.checkpoint import save_model
from snowcloud.infer import predict_scene
from snowcloud.preprocess import preprocess_scene
from snowcloud.training.state import save_state

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
    killed_at(
        "snowcloud.cog",
        "CogWriter.finish",
        f"from snowcloud.preprocess import preprocess_scene; preprocess_scene({str(safe)!r}, None, {str(output)!r}, {CLIPPED!r})",
        tmp_path,
    )
    left = sorted(path.name for path in output.parent.iterdir())
    assert any(".level0.part0.tif" in name for name in left) and any(name.endswith(".strips.tif") for name in left), (
        left
    )
    preprocess_scene(safe, None, output, CLIPPED)
    assert sorted(output.parent.iterdir()) == [output]


def test_an_inference_killed_before_its_cogs_leaves_a_scratch_folder_that_the_next_run_removes(tmp_path):
    model_path, scene = write_model_and_scene(tmp_path, size=64)
    output = tmp_path / "predictions" / "20210116T102351.tif"
    options = INFERENCE
    killed_at(
        "snowcloud.mask",
        "write_cog",
        f"from snowcloud.infer import predict_scene; predict_scene({str(model_path)!r}, {str(scene)!r}, {str(output)!r}, {options!r})",
        tmp_path,
    )
    assert [path.name for path in output.parent.iterdir() if path.is_dir()], "the killed run left its scratch folder"
    predict_scene(str(model_path), str(scene), str(output), options)
    assert sorted(path.name for path in output.parent.iterdir()) == ["20210116T102351.tif", "20210116T102351_proba.tif"]


# ----------------------------------------------------------------------------------------------- a full disk


@pytest.fixture
def small_filesystem(tmp_path) -> Path:
    """A 4 MB tmpfs folder (root only): a file system that a test can fill."""
    folder = tmp_path / "small"
    folder.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path, leave: int = 0) -> Path:
    """Fill the file system of `folder` up to `leave` free bytes with a filler file; returns the file."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        while (room := shutil.disk_usage(folder).free - leave) > 0:
            try:
                handle.write(bytes(min(room, 1 << 20)))
                handle.flush()
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
    return filler


@contextlib.contextmanager
def full_for_a_moment(monkeypatch, owner: object, name: str, folder: Path):
    """The disk of `folder` full while the first call of `owner.name` runs, free again right after."""
    original = getattr(owner, name)
    calls = []

    def with_full_disk(*args, **kwargs):
        if calls:
            return original(*args, **kwargs)
        calls.append(1)
        filler = fill(folder)
        try:
            return original(*args, **kwargs)
        finally:
            filler.unlink()

    monkeypatch.setattr(owner, name, with_full_disk)
    yield


def test_a_moment_of_full_disk_while_a_cog_part_is_written_fails_the_preprocess_and_leaves_nothing(
    tmp_path, small_filesystem, monkeypatch
):
    safe = make_product(tmp_path / "raw", constant_bands(120))
    output = small_filesystem / "20220201T102209.tif"
    with full_for_a_moment(monkeypatch, cog._Level, "_write_part", small_filesystem):
        with pytest.raises(OSError, match=str(output)):
            preprocess_scene(safe, None, output, CLIPPED)
    assert sorted(small_filesystem.iterdir()) == []


def test_a_moment_of_full_disk_while_the_strips_are_written_fails_the_preprocess(
    tmp_path, small_filesystem, monkeypatch
):
    safe = make_product(tmp_path / "raw", constant_bands(120))
    output = small_filesystem / "20220201T102209.tif"
    with full_for_a_moment(monkeypatch, rasterio.io.DatasetWriter, "write", small_filesystem):
        with pytest.raises(
            NoSpaceError,
            match=rf"no space left on {small_filesystem} for {output} \(needs about 0\.8 MB, 0\.0 MB free when a write failed\): .*GDAL signalled",
        ):
            preprocess_scene(safe, None, output, CLIPPED)
    assert sorted(small_filesystem.iterdir()) == []


def test_a_disk_that_stays_full_says_no_space_left_and_how_much_is_needed(tmp_path, small_filesystem):
    safe = make_product(tmp_path / "raw", constant_bands(120))
    fill(small_filesystem, leave=64 * 1024)
    output = small_filesystem / "20220201T102209.tif"
    with pytest.raises(
        NoSpaceError, match=rf"no space left on {small_filesystem} for {output} \(needs about 0\.8 MB, "
    ):
        preprocess_scene(safe, None, output, CLIPPED)
    assert sorted(small_filesystem.iterdir()) == [small_filesystem / "filler"]


@pytest.mark.parametrize("writer", ["geotiff", "hdf5", "model", "state"])
def test_every_writer_on_a_full_disk_fails_with_no_space_left(small_filesystem, writer):
    """Without an estimate to check first, the failing write itself is recognised as a full disk."""
    fill(small_filesystem)
    output = small_filesystem / f"output.{writer}"
    values = np.random.default_rng(0).integers(0, 255, (1, 256, 256), dtype=np.uint8)
    with pytest.raises(NoSpaceError, match=f"no space left on {small_filesystem} for {output}"):
        if writer == "geotiff":
            with (
                atomic_output(output) as tmp,
                rasterio.open(tmp, "w", driver="GTiff", width=256, height=256, count=1, dtype="uint8") as out,
            ):
                out.write(values)
        elif writer == "hdf5":
            with atomic_output(output) as tmp, h5py.File(tmp, "w") as shard:
                shard.create_dataset("image", shape=(64, 256, 256), dtype="u1", chunks=(1, 256, 256))[0] = values[0]
        elif writer == "model":
            network = model_registry.build_model("unet", in_channels=3, n_classes=4, base_channels=8)
            save_model(
                output,
                network,
                {"architecture": "unet", "model_args": {}, "bands": [], "normalisation": {}, "patch_size": 64},
            )
        else:
            save_state(output, {"weights": torch.zeros(2**20)})
    assert sorted(small_filesystem.iterdir()) == [small_filesystem / "filler"]


def write_model_and_scene(tmp_path: Path, size: int = 200) -> tuple[Path, Path]:
    """A small 14-band U-Net checkpoint and a `size` x `size` scene raster for it."""
    bands = [*BANDS, ELEVATION]
    torch.manual_seed(0)
    model_args = {"in_channels": len(bands), "n_classes": 4, "base_channels": 4}
    metadata = {
        "architecture": "unet",
        "model_args": model_args,
        "bands": bands,
        "patch_size": 64,
        "normalisation": normalisation.spec("snowcloud-v1"),
    }
    model_path = tmp_path / "model.pt"
    save_model(model_path, model_registry.build_model("unet", **model_args), metadata)
    scene = write_scene(
        tmp_path / "scenes" / "20210116T102351.tif", synthetic_scene(np.random.default_rng(0), size, size)
    )
    return model_path, scene


INFERENCE = {"batch_size": 4, "overlap": 0.5, "tta": False, "probabilities": True, "device": "cpu", "amp": False}


def test_a_moment_of_full_disk_while_the_mask_is_written_fails_the_inference_and_leaves_nothing(
    tmp_path, small_filesystem, monkeypatch
):
    model_path, scene = write_model_and_scene(tmp_path)
    output = small_filesystem / "20210116T102351.tif"
    with full_for_a_moment(monkeypatch, rasterio.io.DatasetWriter, "write", small_filesystem):
        with pytest.raises(OSError, match=f"{output} \\(its scratch rasters\\)"):
            predict_scene(str(model_path), str(scene), str(output), INFERENCE)
    assert sorted(small_filesystem.iterdir()) == []


def test_an_inference_onto_a_full_disk_says_no_space_left(tmp_path, small_filesystem):
    model_path, scene = write_model_and_scene(tmp_path)
    fill(small_filesystem, leave=64 * 1024)
    output = small_filesystem / "20210116T102351.tif"
    with pytest.raises(
        NoSpaceError, match=rf"no space left on {small_filesystem} for {output} \(needs about 0\.5 MB, "
    ):
        predict_scene(str(model_path), str(scene), str(output), INFERENCE)
