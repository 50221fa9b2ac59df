import pytest
import torch
import torch.nn.functional as F

from snowcloud.losses import build_loss

WEIGHTS = [1.2, 1.5, 1.7, 11.0]


def _batch(seed=0, ignored_fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, 4, 8, 8, generator=generator)
    label = torch.randint(0, 4, (2, 8, 8), generator=generator)
    label[torch.rand(2, 8, 8, generator=generator) < ignored_fraction] = 255
    return logits, label


def test_thesis_bce_is_bce_with_logits_with_pos_weight_on_one_hot_targets():
    logits, label = _batch(ignored_fraction=0)
    target = F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(WEIGHTS).view(4, 1, 1), reduction="mean")
    torch.testing.assert_close(build_loss("thesis-bce", WEIGHTS)(logits, label), reference(logits, target))


def test_ce_dice_without_dice_is_pytorch_weighted_cross_entropy_with_ignore_index():
    logits, label = _batch()
    expected = F.cross_entropy(logits, label, weight=torch.tensor(WEIGHTS), ignore_index=255)
    torch.testing.assert_close(build_loss("ce-dice", WEIGHTS, dice_weight=0)(logits, label), expected)


@pytest.mark.parametrize("name", ["thesis-bce", "ce-dice"])
def test_pixels_labelled_255_contribute_nothing(name):
    loss_fn = build_loss(name, WEIGHTS)
    logits, label = _batch()
    ignored = label == 255
    assert ignored.any() and (~ignored).any()

    logits.requires_grad_(True)
    loss = loss_fn(logits, label)
    loss.backward()
    assert torch.all(logits.grad.permute(0, 2, 3, 1)[ignored] == 0)
    assert torch.any(logits.grad.permute(0, 2, 3, 1)[~ignored] != 0)

    # whatever the network says at ignored pixels, the loss is the same
    changed = logits.detach().clone()
    changed.permute(0, 2, 3, 1)[ignored] = 50.0
    torch.testing.assert_close(loss_fn(changed, label), loss.detach())


def test_thesis_bce_averages_over_valid_pixels_only():
    logits, label = _batch()
    valid = label != 255
    pixels = logits.permute(0, 2, 3, 1)[valid]  # (N, 4)
    target = F.one_hot(label[valid], 4).float()
    expected = F.binary_cross_entropy_with_logits(pixels, target, pos_weight=torch.tensor(WEIGHTS))
    torch.testing.assert_close(build_loss("thesis-bce", WEIGHTS)(logits, label), expected)


@pytest.mark.parametrize("name", ["thesis-bce", "ce-dice"])
def test_a_batch_without_labelled_pixels_gives_zero_not_nan(name):
    logits = torch.randn(1, 4, 8, 8, requires_grad=True)
    loss = build_loss(name, WEIGHTS)(logits, torch.full((1, 8, 8), 255))
    loss.backward()
    assert loss.item() == 0.0 and torch.all(logits.grad == 0)


def test_dice_term_rewards_the_right_answer():
    _, label = _batch(ignored_fraction=0)
    right = F.one_hot(label, 4).permute(0, 3, 1, 2).float() * 20 - 10
    wrong = right.roll(1, dims=1)
    loss_fn = build_loss("ce-dice", WEIGHTS, dice_weight=1.0)
    assert loss_fn(right, label).item() < 1e-3
    assert loss_fn(wrong, label).item() > 10


@pytest.mark.parametrize("name", ["thesis-bce", "ce-dice"])
def test_low_precision_logits_give_a_float32_loss(name):
    logits, label = _batch()
    loss = build_loss(name, WEIGHTS)(logits.bfloat16(), label)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, build_loss(name, WEIGHTS)(logits.bfloat16().float(), label))


def test_unknown_loss_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown loss 'focal'"):
        build_loss("focal", WEIGHTS)


def test_thesis_bce_summed_is_the_mean_times_the_elements_up_to_202ea7d():
    logits, label = _batch(ignored_fraction=0)
    target = F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(WEIGHTS).view(4, 1, 1), reduction="sum")
    torch.testing.assert_close(
        build_loss("thesis-bce", WEIGHTS, reduction="sum")(logits, label), reference(logits, target)
    )


def test_thesis_bce_on_softmax_feeds_the_softmax_to_bce_with_logits_like_913b2a3():
    logits, label = _batch(ignored_fraction=0)
    target = F.one_hot(label, 4).permute(0, 3, 1, 2).float()
    reference = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor(WEIGHTS).view(4, 1, 1))(logits.softmax(1), target)
    torch.testing.assert_close(build_loss("thesis-bce-on-softmax", WEIGHTS)(logits, label), reference)
    with pytest.raises(ValueError, match="reduction"):
        build_loss("thesis-bce", WEIGHTS, reduction="median")
