import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from snowcloud.augment import Augmentation, EpochItems, sample_rng


def _patch(channels=5, size=32):
    image = torch.arange(channels * size * size, dtype=torch.float32).reshape(channels, size, size) + 1
    label = torch.arange(size * size).reshape(size, size) % 4
    return image, label


def test_same_seed_epoch_and_index_give_the_same_augmentation():
    augment = Augmentation(flip_p=0.5, channel_dropout_p=0.3, erase_p=0.5, erase_size=(4, 16))
    image, label = _patch()
    first = augment(image, label, sample_rng(7, 3, 11))
    second = augment(image, label, sample_rng(7, 3, 11))
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    others = [augment(image, label, sample_rng(7, epoch, 11))[0] for epoch in range(4, 12)]
    assert any(not torch.equal(first[0], other) for other in others)


def test_inputs_are_left_untouched():
    image, label = _patch()
    before = image.clone(), label.clone()
    Augmentation(flip_p=1, channel_dropout_p=1, erase_p=1)(image, label, sample_rng(0, 0, 0))
    assert torch.equal(image, before[0]) and torch.equal(label, before[1])


def test_flips_move_image_and_label_together():
    image, label = _patch()
    out_image, out_label = Augmentation(flip_p=1.0)(image, label, sample_rng(0, 0, 0))
    assert torch.equal(out_image, image.flip(-1).flip(-2))
    assert torch.equal(out_label, label.flip(-1).flip(-2))
    same = Augmentation(flip_p=0.0, erase_p=0.0)(image, label, sample_rng(0, 0, 0))
    assert torch.equal(same[0], image) and torch.equal(same[1], label)


def test_channel_dropout_zeroes_whole_channels():
    image, label = _patch(channels=12)
    augment = Augmentation(channel_dropout_p=0.5)
    zeroed = []
    for index in range(40):
        out, out_label = augment(image, label, sample_rng(1, 0, index))
        assert torch.equal(out_label, label)
        is_zero = out.flatten(1).eq(0).all(1)
        kept = ~is_zero
        assert torch.equal(out[kept], image[kept])
        zeroed.append(is_zero.float().mean().item())
    assert 0.35 < np.mean(zeroed) < 0.65


def test_erasing_zeroes_a_square_of_the_image_and_marks_it_255():
    image, label = _patch(size=64)
    augment = Augmentation(erase_p=1.0, erase_size=(8, 20))
    sides = set()
    for index in range(30):
        out, out_label = augment(image, label, sample_rng(2, 1, index))
        erased = out_label == 255
        rows, cols = torch.nonzero(erased, as_tuple=True)
        side = int(rows.max() - rows.min() + 1)
        assert side == int(cols.max() - cols.min() + 1) and erased.sum() == side * side
        assert 8 <= side <= 20
        assert torch.all(out[:, erased] == 0) and torch.all(out[:, ~erased] == image[:, ~erased])
        sides.add(side)
    assert len(sides) > 3


def test_flip_probability_is_respected():
    image, label = _patch(channels=1, size=8)
    augment = Augmentation(flip_p=0.25)
    flipped = [not torch.equal(augment(image, label, sample_rng(3, 0, i))[0], image) for i in range(800)]
    # P(at least one of two flips) = 1 - 0.75**2 = 0.4375
    assert np.mean(flipped) == pytest.approx(0.4375, abs=0.06)


def test_erase_size_is_checked():
    with pytest.raises(ValueError, match="erase_size"):
        Augmentation.from_options({"erase_size": [30, 10]})
    assert Augmentation.from_options({"flip_p": 0.25, "erase_size": [8, 128]}) == Augmentation(flip_p=0.25)


def test_epoch_items_do_not_depend_on_worker_assignment():
    images = torch.randn(12, 3, 16, 16)
    labels = torch.randint(0, 4, (12, 16, 16))
    items = EpochItems(TensorDataset(images, labels), Augmentation(flip_p=0.5, erase_p=0.5, erase_size=(2, 8)), seed=5)
    batches = [[(2, i) for i in range(j, j + 4)] for j in (8, 0, 4)]

    def run(workers):
        loader = DataLoader(items, batch_sampler=batches, num_workers=workers)
        return [batch for batch in loader]

    serial, parallel = run(0), run(2)
    for (image_a, label_a), (image_b, label_b) in zip(serial, parallel, strict=True):
        assert torch.equal(image_a, image_b) and torch.equal(label_a, label_b)
    # the same patch, fetched alone, is augmented the same way as inside a batch
    assert torch.equal(items[(2, 9)][0], serial[0][0][1])
    # and without augmentation the dataset's item comes through unchanged
    plain = EpochItems(TensorDataset(images, labels))
    assert torch.equal(plain[(2, 9)][0], images[9])
