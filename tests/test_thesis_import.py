"""`snowcloud import-thesis`: a state dict with the thesis U-Net's names and shapes becomes a model.pt that
predicts what the thesis module predicts with the same weights."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from helpers.thesis_unet import ThesisUNet

from snowcloud import checkpoint, cli, thesis
from snowcloud.bands import BANDS, ELEVATION


@pytest.fixture(scope="module")
def thesis_module() -> ThesisUNet:
    """The replica with random weights, BatchNorm statistics included (so buffers must be mapped too)."""
    torch.manual_seed(1)
    module = ThesisUNet(n_channels=14, n_classes=4)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            if name.endswith("running_mean"):
                tensor.normal_(0, 0.1)
            elif name.endswith("running_var"):
                tensor.uniform_(0.5, 2.0)
    return module.eval()


@pytest.fixture(scope="module")
def pth(thesis_module, tmp_path_factory):
    path = tmp_path_factory.mktemp("thesis") / "unet_a82e3cd_ep30.pth"
    torch.save(thesis_module.state_dict(), path)
    return path


def test_every_thesis_tensor_maps_one_to_one_and_the_classes_agree(thesis_module, pth, tmp_path, capsys):
    out = tmp_path / "a82e3cd.pt"
    assert cli.main(["import-thesis", str(pth), "--preset", "a82e3cd", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    thesis_state = thesis_module.state_dict()
    payload = checkpoint.read_checkpoint(out)
    assert len(payload["state_dict"]) == len(thesis_state)
    for name, tensor in thesis_state.items():
        assert torch.equal(payload["state_dict"][thesis.snowcloud_name(name)], tensor), name

    model, metadata = checkpoint.load_model(out)
    x = torch.randn(2, 14, 64, 64)
    with torch.no_grad():
        theirs_logits, theirs_softmax = thesis_module(x)
        ours = model(x)
    assert torch.allclose(ours, theirs_logits, atol=1e-4)
    assert torch.equal(ours.argmax(1), theirs_softmax.argmax(1))

    assert metadata["bands"] == [*BANDS, ELEVATION] and metadata["patch_size"] == 256
    assert metadata["normalisation"]["name"] == "dynamic-world-percentile"
    preprocess = metadata["preprocess"]
    assert (preprocess["resampling"], preprocess["cubic_a"], preprocess["dem"]) == ("cubic", -0.75, True)
    assert metadata["imported_from"]["preset"] == "a82e3cd"


def test_wrapped_names_are_unwrapped():
    assert thesis.snowcloud_name("_orig_mod.module.up1.conv.double_conv.4.running_var") == "ups.0.conv.4.running_var"
    assert thesis.snowcloud_name("module.down4.maxpool_conv.1.double_conv.0.weight") == "downs.3.1.0.weight"


def test_state_dict_of_another_shape_is_refused_naming_file_and_preset(tmp_path):
    path = tmp_path / "thirteen.pth"
    # the first and last convolutions of a 13-channel thesis U-Net (the shapes are checked before the rest)
    torch.save(
        {"inc.double_conv.0.weight": torch.zeros(64, 13, 3, 3), "outc.conv.weight": torch.zeros(4, 64, 1, 1)}, path
    )
    with pytest.raises(thesis.ThesisImportError, match=r"thirteen\.pth has 13 input channels.*a82e3cd means 14"):
        thesis.import_thesis(path, "a82e3cd", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()


def test_a_preset_is_found_by_name_outside_the_checkout(pth, tmp_path):
    """The presets ship with the package: a run from any folder finds them, and an unknown name says where
    they were looked for and how to give a file instead."""
    command = [sys.executable, "-m", "snowcloud", "import-thesis", str(pth), "--out", "a82e3cd.pt", "--preset"]
    done = subprocess.run([*command, "a82e3cd"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert checkpoint.read_checkpoint(tmp_path / "a82e3cd.pt")["metadata"]["experiment"] == "a82e3cd"

    done = subprocess.run([*command, "a82e3cf"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 1 and f"in {thesis.PRESETS}) are 1c88144, 202ea7d," in done.stderr
    assert "or the path of a preset YAML file" in done.stderr and "Traceback" not in done.stderr
