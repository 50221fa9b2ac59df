import json

import numpy as np
import pytest
from helpers.rasters import synthetic_scene, write_label, write_scene
from helpers.training_shards import shard_options

from snowcloud.augment import Augmentation
from snowcloud.bands import BANDS, ELEVATION
from snowcloud.labels import IGNORE_INDEX
from snowcloud.loader import ShardDataset
from snowcloud.normalisation import apply, band_values, spec
from snowcloud.scene import NODATA, REFLECTANCE_SCALE, store_values
from snowcloud.shards import build_shard, open_shard
from snowcloud.spectral import SpectralRanges, haze_profile, perturb

BANDS_AND_ELEVATION = [*BANDS, ELEVATION]


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


# --- the spectral augmentation, on real shards ------------------------------------------------------------------

NO_SPECTRAL_EFFECT = {
    "gain": [1.0, 1.0],
    "band_gain": [1.0, 1.0],
    "offset": [0.0, 0.0],
    "haze": [0.0, 0.0],
    "haze_exponent": [1.0, 1.0],
    "blur_sigma": [0.0, 0.0],
    "noise_std": [0.0, 0.0],
}


def _shard_with_no_data(root, normalisation="snowcloud-v1", seed=0):
    """A real shard (scene raster + label through build_shard) whose patches hold no-data pixels (the scene's
    right 8 columns) and unlabelled valid pixels."""
    rng = np.random.default_rng(seed)
    values = synthetic_scene(rng, 48, 48)
    values[:, :, 40:] = NODATA
    scene = write_scene(root / "scenes" / "32TNS" / "20210710T101559.tif", values)
    classes = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size=(48, 48))
    label = write_label(root / "labels" / "32TNS" / "20210710T101559.tif", classes)
    options = shard_options(normalisation=normalisation, patch_size=16)
    options["sampler"] |= {"method": "grid", "stride": 16, "min_labelled_fraction": 0.3}
    output = root / "shards" / "32TNS" / "20210710T101559.h5"
    build_shard(scene, label, output, "demo", options)
    return output


def _spectral(p=1.0, **ranges):
    return {"flip_p": 0.0, "erase_size": [8, 128], "spectral": {"p": p, **NO_SPECTRAL_EFFECT, **ranges}}


def _augmented(shard, options, seed=5, epoch=0):
    """(stored images, augmented images, labels) of every patch of a shard, float32, through the loader."""
    with open_shard(shard) as opened:
        bands, spec = json.loads(opened.attrs["bands"]), json.loads(opened.attrs["normalisation"])
    plain = ShardDataset([(shard, None)])
    augmented = ShardDataset([(shard, None)], Augmentation.from_options(options, bands, spec), seed=seed)
    augmented.set_epoch(epoch)
    stored = [plain[i] for i in range(len(plain))]
    changed = [augmented[i] for i in range(len(augmented))]
    return (
        np.stack([image.numpy() for image, _ in stored]),
        np.stack([image.numpy() for image, _ in changed]),
        np.stack([label.numpy() for _, label in stored]),
        spec,
    )


def _reflectance(spec, images):
    """Reflectance of the 13 L1C bands of normalised patches (N, C, P, P)."""
    return np.stack([band_values(spec, image[: len(BANDS)]) for image in images]) / REFLECTANCE_SCALE


def _no_data(images, labels):
    return (labels == IGNORE_INDEX) & (images == 0).all(axis=1)


@pytest.mark.parametrize("normalisation", ["snowcloud-v1", "dynamic-world-percentile", "legacy-dn10000"])
def test_a_spectral_gain_multiplies_the_reflectance_of_every_band_and_leaves_elevation_and_no_data(
    tmp_path, normalisation
):
    shard = _shard_with_no_data(tmp_path, normalisation)
    stored, out, labels, spec = _augmented(shard, _spectral(gain=[1.1, 1.1]))
    no_data = _no_data(stored, labels)
    assert no_data.any() and (~no_data).any()
    np.testing.assert_array_equal(out[:, len(BANDS)], stored[:, len(BANDS)])  # elevation: bit for bit
    assert (out.transpose(1, 0, 2, 3)[:, no_data] == 0).all()
    before, after = _reflectance(spec, stored), _reflectance(spec, out)
    bright = (before > 0.05).transpose(1, 0, 2, 3) & ~no_data  # (C, N, P, P): away from float16's coarse dark end
    ratio = after.transpose(1, 0, 2, 3)[bright] / before.transpose(1, 0, 2, 3)[bright]
    assert np.median(ratio) == pytest.approx(1.1, abs=0.002)
    assert np.percentile(np.abs(ratio - 1.1), 99) < 0.01  # float16 storage of the normalised values


def test_haze_brightens_the_blue_most_leaves_b10_and_follows_its_wavelength_law(tmp_path):
    shard = _shard_with_no_data(tmp_path)
    stored, out, labels, spec = _augmented(shard, _spectral(haze=[0.03, 0.03], haze_exponent=[2.0, 2.0]))
    valid = ~_no_data(stored, labels)
    before, after = _reflectance(spec, stored), _reflectance(spec, out)
    dark = (before < 0.2).transpose(1, 0, 2, 3) & valid  # where float16 keeps the added path reflectance exact
    added = {
        band: float(np.median((after - before * (1 - h)).transpose(1, 0, 2, 3)[c][dark[c]]))
        for c, (band, h) in enumerate(zip(BANDS, haze_profile(BANDS, 0.03, 2.0)))
    }
    for band, h in zip(BANDS, haze_profile(BANDS, 0.03, 2.0)):
        assert added[band] == pytest.approx(h, abs=3e-4), band
    assert added["B02"] == pytest.approx(0.03 * (492.4 / 490) ** -2, abs=3e-4)
    assert added["B01"] > added["B02"] > added["B04"] > added["B08"] > added["B12"] > 0
    assert added["B10"] == pytest.approx(0, abs=1e-4)


def test_spectral_ranges_bound_the_drawn_effects_on_real_patches(tmp_path):
    shard = _shard_with_no_data(tmp_path)
    options = _spectral(p=1.0, gain=[0.9, 1.1], band_gain=[0.95, 1.05], offset=[-0.01, 0.01])
    stored, out, labels, spec = _augmented(shard, options)
    valid = ~_no_data(stored, labels)
    before, after = _reflectance(spec, stored), _reflectance(spec, out)
    seen = []
    for n in range(len(stored)):
        for c in range(len(BANDS)):
            x, y = before[n, c][valid[n]], after[n, c][valid[n]]
            gain, offset = np.polyfit(x, y, 1)  # y = gain x + offset, exactly up to float16
            assert 0.9 * 0.95 - 0.005 <= gain <= 1.1 * 1.05 + 0.005
            assert -0.01 - 0.002 <= offset <= 0.01 + 0.002
            seen.append(gain)
    assert np.ptp(seen) > 0.1  # the gains vary between patches and bands


def test_blur_and_noise_change_only_valid_pixels_and_keep_the_mean(tmp_path):
    shard = _shard_with_no_data(tmp_path)
    stored, out, labels, spec = _augmented(shard, _spectral(blur_sigma=[1.0, 1.0], noise_std=[0.004, 0.004]))
    no_data = _no_data(stored, labels)
    assert (out.transpose(1, 0, 2, 3)[:, no_data] == 0).all()
    np.testing.assert_array_equal(out[:, len(BANDS)], stored[:, len(BANDS)])
    before, after = _reflectance(spec, stored), _reflectance(spec, out)
    valid = ~no_data
    difference = (after - before).transpose(1, 0, 2, 3)[:, valid]
    assert abs(float(difference.mean())) < 0.002
    assert float(difference.std()) > 0.004  # blur of a textured scene, plus the noise


def test_the_spectral_augmentation_is_determined_by_seed_epoch_and_index(tmp_path):
    shard = _shard_with_no_data(tmp_path)
    options = _spectral(p=0.7) | {"spectral": {"p": 0.7}}  # the documented default ranges
    first = _augmented(shard, options, seed=3, epoch=2)[1]
    second = _augmented(shard, options, seed=3, epoch=2)[1]
    np.testing.assert_array_equal(first, second)
    other_epoch = _augmented(shard, options, seed=3, epoch=3)[1]
    assert not np.array_equal(first, other_epoch)


def test_with_spectral_p_0_the_augmentation_is_bit_identical_to_the_one_without_it(tmp_path):
    """p 0 is today's augmentation; p 1 moves no flip or erased square (its draws come after theirs)."""
    shard = _shard_with_no_data(tmp_path)
    thesis = {"flip_p": 0.5, "channel_dropout_p": 0.2, "erase_p": 0.5, "erase_size": [2, 8]}
    today = _augmented(shard, thesis, seed=9, epoch=1)[1]
    with_key = _augmented(shard, thesis | {"spectral": {"p": 0.0}}, seed=9, epoch=1)[1]
    np.testing.assert_array_equal(today, with_key)
    assert not Augmentation.from_options({"flip_p": 0, "spectral": {"p": 0.0}}).active
    plain = ShardDataset([(shard, None)], Augmentation.from_options(thesis), seed=9)
    spectral = ShardDataset(
        [(shard, None)],
        Augmentation.from_options(thesis | {"spectral": {"p": 1.0}}, BANDS_AND_ELEVATION, spec("snowcloud-v1")),
        seed=9,
    )
    for index in range(len(plain)):
        np.testing.assert_array_equal(plain[(index, 1)][1], spectral[(index, 1)][1])  # same erased squares, flips


def test_the_spectral_augmentation_needs_an_invertible_normalisation_and_the_bands():
    with pytest.raises(ValueError, match="sigma-clip"):
        Augmentation.from_options({"spectral": {"p": 0.5}}, BANDS_AND_ELEVATION, spec("sigma-clip"))
    with pytest.raises(ValueError, match="13 L1C bands"):
        Augmentation.from_options({"spectral": {"p": 0.5}}, ["B02", "B03"], spec("snowcloud-v1"))
    with pytest.raises(ValueError, match="spectral.gain"):
        Augmentation.from_options({"spectral": {"p": 0.5, "gain": [1.2, 0.8]}}, BANDS_AND_ELEVATION, spec())


@pytest.mark.parametrize(
    "ranges",
    [
        {"haze": [0.04, 0.04], "haze_exponent": [1.3, 1.3]},
        {"offset": [0.02, 0.02]},
        {"offset": [-0.02, -0.02]},
        {"gain": [0.8, 0.8], "haze": [0.08, 0.08], "haze_exponent": [0.5, 0.5]},
    ],
)
def test_a_perturbed_patch_is_the_perturbed_scene_normalised_as_the_robustness_benchmark_makes_it(ranges):
    """The augmentation (normalised float16 patch -> reflectance -> perturbed -> normalised) gives what
    bench_robustness gives for the same numbers (scene values -> reflectance -> perturbed -> int16 scene values
    -> normalised), band by band in the L1C order, elevation and no data untouched, up to float16 and the scene's
    integer rounding."""
    values = synthetic_scene(np.random.default_rng(4), 32, 32)
    values[:, :, 28:] = NODATA
    valid = values[0] != NODATA
    normalisation = spec("snowcloud-v1")
    patch = apply(normalisation, values, valid, {}).astype(np.float16)
    label = np.where(valid, 0, IGNORE_INDEX).astype(np.uint8)
    options = _spectral(p=1.0, **ranges)["spectral"]
    augmented = Augmentation.from_options({"spectral": options}, BANDS_AND_ELEVATION, normalisation)
    out = augmented.perturbed(patch, label, np.random.default_rng(0)).astype(np.float32)

    perturbation = SpectralRanges.from_options(options).draw(np.random.default_rng(0), len(BANDS))
    reflectance = values[: len(BANDS)].astype(np.float32) / np.float32(REFLECTANCE_SCALE)
    perturbed = values.copy()
    store_values(
        perturb(reflectance, BANDS, perturbation, np.random.default_rng(0), valid) * REFLECTANCE_SCALE,
        perturbed[: len(BANDS)],
    )
    perturbed[:, ~valid] = NODATA
    expected = apply(normalisation, perturbed, valid, {}).astype(np.float16).astype(np.float32)

    assert np.abs(out - patch.astype(np.float32))[: len(BANDS) - 3, valid].mean() > 0.005  # it did change them
    np.testing.assert_allclose(out, expected, atol=0.01)  # float16 steps of values up to 8 are 0.004-0.008
    np.testing.assert_array_equal(out[len(BANDS)], patch[len(BANDS)].astype(np.float32))
    assert (out[:, ~valid] == 0).all()
