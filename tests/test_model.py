import pytest
import torch

from snowcloud.model import build_model, count_parameters


@pytest.mark.parametrize(
    ("in_channels", "n_classes", "expected"), [(14, 4, 31_044_164), (13, 4, 31_043_588), (13, 5, 31_043_653)]
)
def test_thesis_unet_has_the_thesis_parameter_count(in_channels, n_classes, expected):
    assert count_parameters(build_model("unet", in_channels, n_classes)) == expected


def test_thesis_unet_layer_shapes():
    model = build_model("unet", 14, 4)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    # every 3x3 convolution is bias-free (BatchNorm follows); the 1x1 output convolution has a bias
    assert all(c.bias is None for c in convs if c.kernel_size == (3, 3))
    assert model.outc.bias is not None and model.outc.in_channels == 64 and model.outc.out_channels == 4
    ups = [m for m in model.modules() if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [(u.in_channels, u.out_channels) for u in ups] == [(1024, 512), (512, 256), (256, 128), (128, 64)]
    assert not any(isinstance(m, torch.nn.Dropout) for m in model.modules())


@pytest.mark.parametrize("size", [(32, 32), (37, 45)])
def test_small_unet_returns_logits_of_the_input_size(size):
    torch.manual_seed(0)
    model = build_model("unet", 3, 4, base_channels=4).eval()
    x = torch.randn(2, 3, *size)
    logits = model(x)
    assert logits.shape == (2, 4, *size)
    # logits, not probabilities: they do not sum to one over the classes
    assert not torch.allclose(logits.softmax(1).sum(1), logits.sum(1))


def test_base_channels_scales_the_network():
    assert (
        count_parameters(build_model("unet", 14, 4, base_channels=8))
        < count_parameters(build_model("unet", 14, 4)) / 50
    )


def test_unknown_architecture_or_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown architecture 'segformer'.*unet"):
        build_model("segformer", 14, 4)
    with pytest.raises(ValueError, match="does not accept"):
        build_model("unet", 14, 4, depth=3)
