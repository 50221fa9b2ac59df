import collections
import re

import numpy as np
import pytest
import torch
from checkpoint_edits import edited

from snowcloud import normalisation
from snowcloud.checkpoint import CheckpointError, load_model, save_model
from snowcloud.model import build_model
from snowcloud.scene import channel_names

BANDS = channel_names(elevation=True)
NORMALISATION = normalisation.spec("dynamic-world-percentile")


def _metadata(**extra):
    return {
        "architecture": "unet",
        "model_args": {"in_channels": 14, "n_classes": 4, "base_channels": 4},
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
    model = build_model("unet", 14, 4, base_channels=4)
    model.train()(torch.randn(4, 14, 32, 32))  # moves the BatchNorm running statistics off their defaults
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
    x = torch.randn(1, 14, 32, 32)
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
        path, _trained_like_model(), _metadata(model_args={"in_channels": 14, "n_classes": 4, "base_channels": 8})
    )
    with pytest.raises(CheckpointError, match="weights do not fit unet"):
        load_model(path)


def test_a_band_list_that_does_not_match_the_weights_is_refused_naming_the_file(tmp_path):
    """A hand-edited band list would otherwise surface as a torch channel error in the middle of inference."""
    path = tmp_path / "model.pt"
    save_model(path, _trained_like_model(), _metadata(bands=BANDS[:13]))
    with pytest.raises(
        CheckpointError, match=rf"{path}: metadata field 'bands' lists 13 band\(s\) but the network takes 14"
    ):
        load_model(path)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        (
            {"classes": ["background", "snow", "cloud", "water", "ice"]},
            "'classes' lists 5 class(es) (background, snow, cloud, water, ice) but the network has 4 outputs",
        ),
        ({"classes": ["snow", "snow", "cloud", "water"]}, "'classes' names a class twice"),
        ({"bands": [BANDS[1], BANDS[0], *BANDS[2:]]}, "'bands' is ['B02', 'B01'"),
        ({"patch_size": 0}, "'patch_size' is 0; a patch size is an integer of at least 16"),
        ({"patch_size": 64.5}, "'patch_size' is 64.5"),
        ({"normalisation": {**NORMALISATION, "name": "dw"}}, "'normalisation' unknown normalisation 'dw'"),
        ({"normalisation": {**NORMALISATION, "p30": [1.0] * 12}}, "p30 must be 13 numbers"),
        ({"normalisation": {k: v for k, v in NORMALISATION.items() if k != "mean"}}, "lacks its constant 'mean'"),
        (
            {"class_set": {"classes": {"background": [0], "snow": [1], "cloud": [2], "lake": [3]}}},
            "'class_set' trains background, snow, cloud, lake, but the field 'classes' says background, snow, cloud, water",
        ),
        (
            {"class_set": {"classes": {"background": [0], "snow": [0], "cloud": [2], "water": [3]}}},
            "label value 0 belongs to both background and snow",
        ),
    ],
)
def test_metadata_that_contradicts_the_network_or_the_schema_is_refused_naming_file_and_field(
    tmp_path, fields, message
):
    path = tmp_path / "model.pt"
    save_model(
        path,
        _trained_like_model(),
        _metadata(class_set={"classes": {n: [i] for i, n in enumerate(["background", "snow", "cloud", "water"])}}),
    )
    load_model(path)  # as training wrote it
    with pytest.raises(CheckpointError, match=f"^{re.escape(str(path))}: metadata field .*{re.escape(message)}"):
        load_model(edited(path, **fields))
