import collections

import numpy as np
import pytest
import torch

from snowcloud.checkpoint import CheckpointError, load_model, save_model
from snowcloud.model import build_model

BANDS = ["B01", "B02", "ELEVATION"]
NORMALISATION = {"name": "test-spec", "version": 1, "offset": [0.1, 0.2, 1862.78], "scale": [1.0, 2.0, 3913.0]}


def _metadata(**extra):
    return {
        "architecture": "unet",
        "model_args": {"in_channels": 3, "n_classes": 4, "base_channels": 4},
        "bands": BANDS,
        "normalisation": NORMALISATION,
        "classes": ("background", "snow", "cloud", "water"),
        "patch_size": np.int64(32),
        "validation_metrics": {"iou": {"snow": 0.5, "water": None}},
        "torch_version": torch.__version__,  # a str subclass that weights_only would refuse
        **extra,
    }


def _trained_like_model():
    torch.manual_seed(1)
    model = build_model("unet", 3, 4, base_channels=4)
    model.train()(torch.randn(4, 3, 32, 32))  # moves the BatchNorm running statistics off their defaults
    return model.eval()


def test_round_trip_restores_weights_buffers_and_metadata(tmp_path):
    model = _trained_like_model()
    path = tmp_path / "model.pt"
    save_model(path, model, _metadata())

    raw = torch.load(path, weights_only=True)  # what any tool can do safely
    assert set(raw) == {"state_dict", "metadata"}
    assert raw["metadata"]["bands"] == BANDS
    assert raw["metadata"]["normalisation"] == NORMALISATION

    loaded, metadata = load_model(path, "cpu")
    assert not loaded.training
    assert metadata["classes"] == ["background", "snow", "cloud", "water"]
    assert metadata["patch_size"] == 32 and type(metadata["patch_size"]) is int
    assert metadata["validation_metrics"]["iou"]["water"] is None
    assert metadata["torch_version"] == str(torch.__version__) and type(metadata["torch_version"]) is str
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_compiled_model_is_saved_with_clean_keys(tmp_path):
    model = _trained_like_model()

    class Wrapper(torch.nn.Module):  # what torch.compile returns: the module behind `_orig_mod`
        def __init__(self, inner):
            super().__init__()
            self._orig_mod = inner

    save_model(tmp_path / "model.pt", Wrapper(model), _metadata())
    keys = torch.load(tmp_path / "model.pt", weights_only=True)["state_dict"].keys()
    assert set(keys) == set(model.state_dict())


def test_metadata_that_is_not_plain_data_is_refused(tmp_path):
    with pytest.raises(TypeError, match="metadata.extra: object"):
        save_model(tmp_path / "model.pt", _trained_like_model(), _metadata(extra=object()))
    assert not list(tmp_path.iterdir())  # nothing half-written
    with pytest.raises(ValueError, match="lacks model_args"):
        save_model(tmp_path / "model.pt", _trained_like_model(), {"architecture": "unet"})


def test_foreign_files_are_refused_with_a_clear_message(tmp_path):
    model = _trained_like_model()
    bare = tmp_path / "unet_a82e3cd_ep30.pth"
    torch.save(collections.OrderedDict(model.state_dict()), bare)
    with pytest.raises(CheckpointError, match="unet_a82e3cd_ep30.pth is not a snowcloud checkpoint.*bare state_dict"):
        load_model(bare)

    pickled = tmp_path / "pickled.pt"
    torch.save(model, pickled)  # a whole pickled module: refused by weights_only, never unpickled
    with pytest.raises(CheckpointError, match="pickled.pt is not a snowcloud checkpoint: it cannot be read"):
        load_model(pickled)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.pt is not a snowcloud checkpoint"):
        load_model(text)

    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_model(tmp_path / "missing.pt")


def test_weights_that_do_not_fit_the_metadata_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    save_model(
        path, _trained_like_model(), _metadata(model_args={"in_channels": 3, "n_classes": 4, "base_channels": 8})
    )
    with pytest.raises(CheckpointError, match="weights do not fit unet"):
        load_model(path)


def test_a_band_list_that_does_not_match_the_weights_is_refused_naming_the_file(tmp_path):
    """A hand-edited band list would otherwise surface as a torch channel error in the middle of inference."""
    path = tmp_path / "model.pt"
    save_model(path, _trained_like_model(), _metadata(bands=["B02", "ELEVATION"]))
    with pytest.raises(CheckpointError, match=rf"{path}: its metadata lists 2 band\(s\) \(B02, ELEVATION\) but its weights take 3"):
        load_model(path)
