import numpy as np
import pytest

from snowcloud.augment import Augmentation


def _rng(*keys):
    return np.random.default_rng(keys)


def _patch(channels=5, size=32):
    image = np.arange(channels * size * size, dtype=np.float32).reshape(channels, size, size) + 1
    label = np.random.default_rng(0).integers(0, 4, (size, size))
    return image, label


def test_the_same_generator_seed_gives_the_same_augmentation():
    augment = Augmentation(flip_p=0.5, channel_dropout_p=0.3, erase_p=0.5, erase_size=(4, 16))
    image, label = _patch()
    first = augment(image, label, _rng(7, 3, 11))
    second = augment(image, label, _rng(7, 3, 11))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    others = [augment(image, label, _rng(7, epoch, 11))[0] for epoch in range(4, 12)]
    assert any(not np.array_equal(first[0], other) for other in others)


def test_inputs_are_left_untouched_and_outputs_keep_their_types():
    image, label = _patch()
    before = image.copy(), label.copy()
    out_image, out_label = Augmentation(flip_p=1, channel_dropout_p=0.5, erase_p=1)(image, label, _rng(0))
    np.testing.assert_array_equal(image, before[0])
    np.testing.assert_array_equal(label, before[1])
    assert out_image.dtype == np.float32 and out_label.dtype == label.dtype
    assert out_image.flags.c_contiguous and out_label.flags.c_contiguous


def test_flips_move_image_and_label_together():
    image, label = _patch()
    out_image, out_label = Augmentation(flip_p=1.0)(image, label, _rng(0))
    np.testing.assert_array_equal(out_image, image[:, ::-1, ::-1])
    np.testing.assert_array_equal(out_label, label[::-1, ::-1])
    same = Augmentation()(image, label, _rng(0))
    np.testing.assert_array_equal(same[0], image)
    np.testing.assert_array_equal(same[1], label)


def test_flip_probability_is_per_axis():
    image, label = _patch(channels=1, size=8)
    augment = Augmentation(flip_p=0.25)
    outcomes = {"none": 0, "h": 0, "w": 0, "hw": 0}
    for i in range(1000):
        out = augment(image, label, _rng(3, i))[0]
        for name, flipped in (("none", image), ("h", image[:, ::-1]), ("w", image[:, :, ::-1])):
            if np.array_equal(out, flipped):
                outcomes[name] += 1
                break
        else:
            assert np.array_equal(out, image[:, ::-1, ::-1])
            outcomes["hw"] += 1
    assert outcomes["none"] / 1000 == pytest.approx(0.75**2, abs=0.05)
    assert outcomes["h"] / 1000 == pytest.approx(0.25 * 0.75, abs=0.04)
    assert outcomes["w"] / 1000 == pytest.approx(0.25 * 0.75, abs=0.04)
    assert outcomes["hw"] / 1000 == pytest.approx(0.25**2, abs=0.03)


def test_channel_dropout_zeroes_whole_channels():
    image, label = _patch(channels=12)
    augment = Augmentation(channel_dropout_p=0.5)
    zeroed = []
    for index in range(40):
        out, out_label = augment(image, label, _rng(1, index))
        np.testing.assert_array_equal(out_label, label)
        is_zero = (out.reshape(12, -1) == 0).all(axis=1)
        np.testing.assert_array_equal(out[~is_zero], image[~is_zero])
        zeroed.append(is_zero.mean())
    assert 0.35 < np.mean(zeroed) < 0.65


def test_erasing_zeroes_a_square_of_the_image_and_marks_it_255():
    image, label = _patch(size=64)
    augment = Augmentation(erase_p=1.0, erase_size=(8, 20))
    sides = set()
    for index in range(30):
        out, out_label = augment(image, label, _rng(2, index))
        erased = out_label == 255
        rows, cols = np.nonzero(erased)
        side = int(rows.max() - rows.min() + 1)
        assert side == int(cols.max() - cols.min() + 1) and erased.sum() == side * side
        assert 8 <= side <= 20
        assert np.all(out[:, erased] == 0) and np.all(out[:, ~erased] == image[:, ~erased])
        np.testing.assert_array_equal(out_label[~erased], label[~erased])
        sides.add(side)
    assert len(sides) > 3


def test_erased_square_never_exceeds_the_patch():
    image, label = _patch(size=16)
    out, out_label = Augmentation(erase_p=1.0, erase_size=(8, 128))(image, label, _rng(4))
    assert 8 * 8 <= (out_label == 255).sum() <= 16 * 16


def test_options_are_read_and_checked():
    with pytest.raises(ValueError, match="erase_size"):
        Augmentation.from_options({"erase_size": [30, 10]})
    options = {"flip_p": 0.25, "channel_dropout_p": 0.0, "erase_p": 0.0, "erase_size": [8, 128]}
    assert Augmentation.from_options(options) == Augmentation(flip_p=0.25)
    assert not Augmentation.from_options({"flip_p": 0, "erase_size": [8, 128]}).active
