"""`snowcloud predict` on real products (zipped, unpacked, a folder of them) and scene rasters, with model.pt
checkpoints the tests write: outputs like the workflow's, failing inputs named, the DEM requirement."""

from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import pystac
import pytest
import rasterio
import torch
from checkpoint_edits import edited
from helpers.safe_factory import constant_bands, make_product

from snowcloud import checkpoint, cli, infer, normalisation, preprocess
from snowcloud import predict as predict_module
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.config import scene_value_options
from snowcloud.labels import IGNORE_INDEX
from snowcloud.model import build_model

TILE, DATE = "32TNS", "20220201T102209"
OPTIONS = {"batch_size": 16, "overlap": 0.5, "tta": False, "probabilities": False, "device": "cpu", "amp": False}
# What the model's training scenes were made with: not the defaults, so that a product preprocessed with the
# defaults would differ.
KILL_SIZE = 1200  # pixels per side of the product a predict is killed in: a few seconds of work
TRAINED_WITH = {"resampling": "nearest", "clip": {"method": "percentile", "percentiles": [1, 99]}}


def unet_checkpoint(path: Path, elevation: bool = True, recorded: dict | None = TRAINED_WITH) -> Path:
    """A tiny U-Net with fixed random weights in a real model.pt, recording its training preprocessing."""
    bands = [*BANDS, ELEVATION] if elevation else list(BANDS)
    torch.manual_seed(0)
    args = {"in_channels": len(bands), "n_classes": 4, "base_channels": 4}
    metadata = {
        "architecture": "unet",
        "model_args": args,
        "bands": bands,
        "normalisation": normalisation.spec("snowcloud-v1"),
        "patch_size": 64,
        "classes": ["background", "snow", "cloud", "water"],
        "preprocess": None if recorded is None else scene_value_options({**recorded, "dem": elevation}),
    }
    checkpoint.save_model(path, build_model("unet", **args), metadata)
    return path


def predict(*arguments: object, capsys) -> tuple[int, str, str]:
    status = cli.main(["predict", *map(str, arguments), "--no-tta", "--device", "cpu", "--threads", "1"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def mask(path: Path) -> np.ndarray:
    with rasterio.open(path) as dataset:
        assert dataset.colormap(1)[IGNORE_INDEX][3] == 0 and dataset.tags()["CLASS_1"] == "snow"
        return dataset.read(1)


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return unet_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="module")
def workflow_scene(tiny_demo, model, tmp_path_factory) -> Path:
    """The workflow's path: the scene preprocessed with the options the model records (not the defaults)."""
    scene = tmp_path_factory.mktemp("workflow") / TILE / f"{DATE}.tif"
    options = checkpoint.read_checkpoint(model)["metadata"]["preprocess"]
    preprocess.preprocess_scene(
        tiny_demo["products"][(TILE, DATE)].path, tiny_demo["dem"].format(tile=TILE), scene, options
    )
    return scene


@pytest.fixture(scope="module")
def workflow_mask(model, workflow_scene) -> np.ndarray:
    """The workflow's mask of that scene (predict_scene)."""
    output = workflow_scene.parent.parent / "mask.tif"
    infer.predict_scene(str(model), str(workflow_scene), str(output), OPTIONS)
    return mask(output)


def values(scene: Path) -> np.ndarray:
    with rasterio.open(scene) as dataset:
        return dataset.read()


def test_zipped_product_gives_the_workflows_mask_with_its_preprocessing(
    tiny_demo, model, workflow_mask, tmp_path, capsys
):
    product = tiny_demo["products"][(TILE, DATE)].path
    status, out, _ = predict(
        model,
        product,
        "--dem",
        tiny_demo["dem"],
        "--out",
        tmp_path / "out",
        "--quicklook",
        "--probabilities",
        capsys=capsys,
    )
    assert status == 0
    output = tmp_path / "out" / TILE / f"{DATE}.tif"
    assert np.array_equal(mask(output), workflow_mask)
    assert output.with_name(f"{DATE}_proba.tif").is_file() and output.with_suffix(".png").is_file()
    assert str(output) in out and "1 of 1 input(s) predicted" in out
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [TILE, "season.csv"], "the scene was temporary"


def test_unpacked_product_and_kept_scene_raster_give_the_same_mask(
    tiny_demo, model, workflow_scene, workflow_mask, tmp_path, capsys
):
    with zipfile.ZipFile(tiny_demo["products"][(TILE, DATE)].path) as archive:
        archive.extractall(tmp_path / "unpacked")
    (safe,) = (tmp_path / "unpacked").glob("*.SAFE")
    status, _, _ = predict(
        model, safe, "--dem", tiny_demo["dem"], "--out", tmp_path / "a", "--keep-scenes", capsys=capsys
    )
    assert status == 0 and np.array_equal(mask(tmp_path / "a" / TILE / f"{DATE}.tif"), workflow_mask)
    scene = tmp_path / "a" / "scenes" / TILE / f"{DATE}.tif"
    assert np.array_equal(values(scene), values(workflow_scene)), "preprocessed as the model's training scenes"
    default = tmp_path / "default.tif"
    preprocess.preprocess_scene(safe, tiny_demo["dem"].format(tile=TILE), default, {})
    assert not np.array_equal(values(default), values(workflow_scene)), "the recorded options matter"

    status, out, _ = predict(model, scene, "--out", tmp_path / "b", capsys=capsys)  # a scene raster needs no DEM
    assert status == 0 and np.array_equal(mask(tmp_path / "b" / TILE / f"{DATE}.tif"), workflow_mask)


def test_folder_with_a_corrupt_product_predicts_the_others_and_names_it(tiny_demo, model, tmp_path, capsys):
    folder = tmp_path / "downloads"
    products = [tiny_demo["products"][(tile, DATE)].path for tile in ("32TNS", "32TMS")]
    products.append(tiny_demo["products"][("32TMS", "20211208T102421")].path)
    folder.mkdir()
    for product in products:
        shutil.copy(product, folder)
    broken = folder / products[2].name
    broken.write_bytes(broken.read_bytes()[: broken.stat().st_size // 2])  # a download cut short

    status, out, err = predict(
        model, folder, "--dem", tiny_demo["dem"], "--out", tmp_path / "out", "--stac", "--quicklook", capsys=capsys
    )
    assert status == 1
    outputs = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.tif"))
    assert outputs == [f"32TMS/{DATE}.tif", f"32TNS/{DATE}.tif"]
    assert broken.name in err and "2 of 3 input(s) predicted, 1 failed" in out
    assert not [p for p in (tmp_path / "out").rglob(".*")], "no temporary left behind"
    # The season table and the STAC items of the masks that were made, from the counts the masks recorded.
    with open(tmp_path / "out" / "season.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(row["tile"], row["date"]) for row in rows] == [("32TMS", DATE), ("32TNS", DATE)]
    for row in rows:
        shares = {name: float(row[name]) for name in ("background", "snow", "cloud", "water")}
        counts = np.bincount(mask(tmp_path / "out" / row["tile"] / f"{DATE}.tif").ravel(), minlength=256)
        assert shares == pytest.approx({n: counts[i] / counts[:4].sum() for i, n in enumerate(shares)})
        assert f"{float(row['snow']) * 100:.1f}%" in out, "the printed table has the same shares"
    collection = pystac.Collection.from_file(str(tmp_path / "out" / "collection.json"))
    items = {item.id: item for item in collection.get_items()}
    assert sorted(items) == [f"32TMS_{DATE}", f"32TNS_{DATE}"]
    for item in items.values():
        assert Path(item.assets["mask"].get_absolute_href()) == tmp_path / "out" / (item.id.replace("_", "/") + ".tif")
        assert Path(item.get_self_href()).parent == Path(item.assets["mask"].get_absolute_href()).parent
        assert Path(item.assets["overview"].get_absolute_href()).read_bytes()[:4] == b"\x89PNG"


def test_model_with_elevation_needs_a_dem_that_covers_the_tile(tiny_demo, model, tmp_path, capsys):
    product = tiny_demo["products"][(TILE, DATE)].path
    status, _, err = predict(model, product, "--out", tmp_path / "out", capsys=capsys)
    assert status == 1 and "--dem" in err and "ELEVATION" in err
    assert not (tmp_path / "out").exists(), "refused before any work"

    other_tile = tiny_demo["dem"].format(tile="32TMS")  # lies 100 km west of 32TNS
    status, out, err = predict(model, product, "--dem", other_tile, "--out", tmp_path / "out", capsys=capsys)
    assert status == 1 and product.name in err and "DEM" in err and "0 of 1" in out


def test_model_without_elevation_runs_without_a_dem(tiny_demo, tmp_path, capsys):
    model = unet_checkpoint(tmp_path / "model.pt", elevation=False)
    status, _, _ = predict(model, tiny_demo["products"][(TILE, DATE)].path, "--out", tmp_path / "out", capsys=capsys)
    assert status == 0
    assert set(np.unique(mask(tmp_path / "out" / TILE / f"{DATE}.tif"))) <= {0, 1, 2, 3, IGNORE_INDEX}


def test_a_predict_killed_mid_run_leaves_scratch_that_the_next_run_removes(tmp_path, capsys):
    model = unet_checkpoint(tmp_path / "model.pt", elevation=False)
    product = make_product(tmp_path / "raw", constant_bands(KILL_SIZE), tile=TILE, date=DATE)
    out = tmp_path / "out"
    command = [
        sys.executable,
        "-m",
        "snowcloud",
        "predict",
        model,
        product,
        "--out",
        out,
        "--no-tta",
        "--device",
        "cpu",
        "--threads",
        "1",
    ]
    running = subprocess.Popen(list(map(str, command)), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while not hidden_entries(out) and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # into the preprocessing: its COG parts appear in the scratch
    os.kill(running.pid, signal.SIGKILL)
    assert running.wait() == -signal.SIGKILL, running.stderr.read().decode()[-3000:]
    left = hidden_entries(out)
    assert left, "the killed run left its scratch (the test killed it in time)"

    status, _, _ = predict(model, product, "--out", out, capsys=capsys)
    assert status == 0
    assert hidden_entries(out) == [], f"the rerun removed what the killed one left: {left}"
    assert sorted(p.name for p in (out / TILE).iterdir()) == [f"{DATE}.tif"]


def hidden_entries(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob(".*")) if folder.is_dir() else []


def test_a_bug_stops_the_run_with_its_traceback_instead_of_failing_one_input(
    tiny_demo, model, tmp_path, capsys, monkeypatch
):
    def broken(mask: Path) -> dict:  # a programming error, not a bad input
        return dict(zip(["background", "snow", "cloud", "water"], np.zeros(4) + np.zeros(5), strict=True))

    monkeypatch.setattr(predict_module, "class_percentages", broken)
    products = [tiny_demo["products"][(tile, DATE)].path for tile in ("32TNS", "32TMS")]
    status, out, err = predict(model, *products, "--dem", tiny_demo["dem"], "--out", tmp_path / "out", capsys=capsys)
    assert status == 1 and "Traceback" in err and "operands could not be broadcast" in err
    assert "input(s) predicted" not in out, "the run stopped at the bug, no report of inputs"
    assert len(list((tmp_path / "out").rglob("*.tif"))) == 1, "the second input was not run"


def test_a_checkpoint_whose_classes_contradict_its_network_is_named_before_any_input(tiny_demo, tmp_path, capsys):
    model = edited(unet_checkpoint(tmp_path / "model.pt"), classes=["background", "snow", "cloud", "water", "ice"])
    product = tiny_demo["products"][(TILE, DATE)].path
    status, _, err = predict(model, product, "--dem", tiny_demo["dem"], "--out", tmp_path / "out", capsys=capsys)
    assert status == 1 and f"{model}: metadata field 'classes' lists 5 class(es)" in err and "4 outputs" in err
    assert product.name not in err and not (tmp_path / "out").exists(), "the model is blamed, no input is run"


def test_the_workflows_inference_names_a_patch_size_the_schema_does_not_allow(model, workflow_scene, tmp_path):
    broken = edited(Path(shutil.copy(model, tmp_path / "model.pt")), patch_size=0)
    with pytest.raises(checkpoint.CheckpointError, match=rf"{broken}: metadata field 'patch_size' is 0; a patch size"):
        infer.predict_scene(str(broken), str(workflow_scene), str(tmp_path / "mask.tif"), OPTIONS | {"scheme": "blend"})
