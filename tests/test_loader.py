"""ShardDataset over HDF5 shards, per-process handles, deterministic epoch order and augmentation."""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from helpers.devices import NO_GPU
from torch.utils.data import DataLoader, Dataset

from snowcloud.augment import Augmentation
from snowcloud.loader import (
    BatchLoader,
    EpochSampler,
    RankBatches,
    ShardDataset,
    batch_loader,
    epoch_order,
    is_direct,
    read_patch,
)
from snowcloud.shards import FORMAT as SHARD_FORMAT
from snowcloud.training.loop import make_loader
from snowcloud.training.runtime import resolve_runtime


def make_shard(
    path: Path, n: int, channels: int = 3, size: int = 8, seed: int = 0, compression=None, dtype=np.float16
) -> Path:
    """A shard with the contract's layout: image (N, C, P, P) float16 chunked per patch, label (N, P, P) uint8."""
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as shard:
        shard.create_dataset(
            "image",
            data=rng.normal(size=(n, channels, size, size)).astype(dtype),
            chunks=(1, channels, size, size),
            compression=compression,
        )
        label = rng.choice(np.array([0, 1, 2, 3, 255], np.uint8), size=(n, size, size))
        shard.create_dataset("label", data=label, chunks=(1, size, size), compression=compression)
        shard.attrs["format"] = SHARD_FORMAT
    return path


def stored(path: Path, index: int) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(path, "r") as shard:
        return shard["image"][index].astype(np.float32), shard["label"][index].astype(np.int64)


def flip_and_mark(image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
    """A test augmentation whose result depends on the generator."""
    return image[:, ::-1] + rng.integers(0, 1000), label[::-1]


@pytest.fixture
def shards(tmp_path: Path) -> list[Path]:
    return [make_shard(tmp_path / "a.h5", 5, seed=1), make_shard(tmp_path / "b.h5", 7, seed=2, compression="lzf")]


def test_items_are_the_stored_patches_of_the_members_in_order(shards):
    dataset = ShardDataset([(shards[0], None), (shards[1], [6, 0, 3])])
    assert len(dataset) == 8 and dataset.channels == 3 and dataset.patch_size == 8
    expected = [(shards[0], i) for i in range(5)] + [(shards[1], i) for i in (6, 0, 3)]
    for index, (path, local) in enumerate(expected):
        image, label = dataset[index]
        assert image.dtype == torch.float32 and image.shape == (3, 8, 8)
        assert label.dtype == torch.int64 and label.shape == (8, 8)
        want_image, want_label = stored(path, local)
        np.testing.assert_array_equal(image.numpy(), want_image)
        np.testing.assert_array_equal(label.numpy(), want_label)
    with pytest.raises(IndexError):
        dataset[8]


def test_direct_chunk_read_equals_hdf5_slicing(shards):
    with h5py.File(shards[0], "r") as unfiltered, h5py.File(shards[1], "r") as compressed:
        assert is_direct(unfiltered["image"]) and not is_direct(compressed["image"])
        for shard in (unfiltered, compressed):
            for name in ("image", "label"):
                out = np.empty(shard[name].shape[1:], shard[name].dtype)
                for index in (0, 3):
                    np.testing.assert_array_equal(read_patch(shard[name], index), shard[name][index])
                    assert read_patch(shard[name], index, out=out) is out
                    np.testing.assert_array_equal(out, shard[name][index])


def test_bad_members_are_errors_naming_the_shard(shards, tmp_path):
    with pytest.raises(ValueError, match=r"b\.h5: patch indices outside 0\.\.6"):
        ShardDataset([(shards[1], [7])])
    other = make_shard(tmp_path / "other.h5", 2, channels=4)
    with pytest.raises(ValueError, match=r"other\.h5: patches \(4, 8, 8\) differ"):
        ShardDataset([(shards[0], None), (other, None)])
    with pytest.raises(ValueError, match="at least one shard"):
        ShardDataset([])


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch():
    order = epoch_order(100, seed=3, epoch=2)
    assert sorted(order) == list(range(100))
    np.testing.assert_array_equal(order, epoch_order(100, seed=3, epoch=2))
    assert not np.array_equal(order, epoch_order(100, seed=3, epoch=3))
    assert not np.array_equal(order, epoch_order(100, seed=4, epoch=2))
    assert len(epoch_order(5, seed=-1, epoch=0)) == 5


def test_epoch_sampler_resumes_inside_an_epoch_and_caps_items():
    sampler = EpochSampler(20, seed=5, limit=12)
    sampler.set_epoch(4)
    full = list(sampler)
    assert len(sampler) == 12 and [epoch for _, epoch in full] == [4] * 12
    assert [index for index, _ in full] == list(epoch_order(20, 5, 4)[:12])
    sampler.set_epoch(4, skip=5)
    assert list(sampler) == full[5:] and len(sampler) == 7
    plain = EpochSampler(4, seed=5, shuffle=False)
    assert list(plain) == [(0, 0), (1, 0), (2, 0), (3, 0)]


def test_each_rank_gets_its_contiguous_part_of_every_batch_and_the_parts_make_the_batch():
    sampler = EpochSampler(10, seed=3)
    sampler.set_epoch(2, skip=0)
    whole = list(RankBatches(sampler, 4))
    assert whole == [[(int(index), 2) for index in epoch_order(10, 3, 2)[start : start + 4]] for start in (0, 4, 8)]
    parts = [list(RankBatches(sampler, 4, rank, 3)) for rank in range(3)]
    assert [[len(batch) for batch in part] for part in parts] == [[2, 2, 1], [1, 1, 1], [1, 1, 0]]
    for step, batch in enumerate(whole):
        assert parts[0][step] + parts[1][step] + parts[2][step] == batch
    assert all(len(RankBatches(sampler, 4, rank, 3)) == 3 for rank in range(3))
    with pytest.raises(ValueError, match="rank 3 outside"):
        RankBatches(sampler, 4, 3, 3)


def test_augmentation_depends_only_on_seed_epoch_and_index(shards):
    members = [(shards[0], None), (shards[1], None)]
    dataset = ShardDataset(members, augment=flip_and_mark, seed=9)
    image, label = dataset[(3, 1)]
    raw_image, raw_label = (item.numpy() for item in ShardDataset(members)[3])  # the stored patch, unaugmented
    np.testing.assert_array_equal(label.numpy(), raw_label[::-1])
    shift = image.numpy() - raw_image[:, ::-1]
    assert np.allclose(shift, shift.flat[0]) and shift.flat[0] != 0
    np.testing.assert_array_equal(dataset[(3, 1)][0], image)
    assert not torch.equal(dataset[(3, 2)][0], image)
    dataset.set_epoch(1)
    np.testing.assert_array_equal(dataset[3][0], image)


def _batches(dataset: ShardDataset, workers: int, epoch: int) -> list[torch.Tensor]:
    sampler = EpochSampler(len(dataset), seed=1)
    sampler.set_epoch(epoch)
    loader = DataLoader(dataset, batch_size=3, sampler=sampler, num_workers=workers, persistent_workers=workers > 0)
    return [torch.cat([images.flatten(), labels.flatten().float()]) for images, labels in loader]


def test_workers_open_their_own_handles_and_give_the_same_batches(shards):
    dataset = ShardDataset([(shards[0], None), (shards[1], [1, 2, 4, 5])], augment=flip_and_mark, seed=2)
    dataset[0]  # the parent opens a handle before the workers fork
    assert dataset._pid == os.getpid() and list(dataset._handles) == [0]
    single = _batches(dataset, workers=0, epoch=3)
    parallel = _batches(dataset, workers=2, epoch=3)
    assert len(single) == 3
    for a, b in zip(single, parallel, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    clone = pickle.loads(pickle.dumps(dataset))  # what a spawned worker gets: no handles
    assert clone._handles == {} and clone._pid is None
    torch.testing.assert_close(clone[(4, 3)][0], dataset[(4, 3)][0], rtol=0, atol=0)
    dataset.close()
    assert dataset._handles == {}


def test_a_batch_read_in_shard_order_returns_items_in_the_order_asked(shards):
    dataset = ShardDataset([(shards[0], None), (shards[1], None)])
    keys = [9, 0, (4, 0), 11, 2]
    images, labels = dataset.read_batch(keys)
    assert images.shape == (5, 3, 8, 8) and labels.shape == (5, 8, 8)
    for key, image, label in zip(keys, images, labels, strict=True):
        torch.testing.assert_close(image, dataset[key][0], rtol=0, atol=0)
        torch.testing.assert_close(label, dataset[key][1], rtol=0, atol=0)


def test_a_process_with_another_pid_never_reuses_inherited_handles(shards):
    dataset = ShardDataset([(shards[0], None)])
    dataset[1]
    inherited = dataset._handles[0]
    dataset._pid = -1  # what a forked worker sees: handles that belong to another process
    dataset[2]
    assert dataset._pid == os.getpid() and dataset._handles[0] is not inherited


def test_items_never_alias_the_read_buffers(tmp_path):
    for dtype in (np.float16, np.float32):
        path = make_shard(tmp_path / f"{np.dtype(dtype).name}.h5", 3, dtype=dtype)
        dataset = ShardDataset([(path, None)])
        first, second = dataset[0], dataset[1]
        np.testing.assert_array_equal(first[0].numpy(), stored(path, 0)[0])
        np.testing.assert_array_equal(first[1].numpy(), stored(path, 0)[1])
        assert not torch.equal(first[0], second[0])


@pytest.mark.parametrize("workers", [0, 2])
def test_the_batch_loader_gives_the_default_loaders_batches(shards, workers):
    dataset = ShardDataset([(shards[0], [4, 1, 0]), (shards[1], None)], augment=flip_and_mark, seed=3)
    sampler = EpochSampler(len(dataset), seed=8)
    sampler.set_epoch(2)
    plain = list(DataLoader(dataset, batch_size=4, sampler=sampler))
    staged = batch_loader(dataset, sampler, 4, num_workers=workers)
    batched = [(image.clone(), label.clone()) for image, label in staged]
    assert len(plain) == len(batched) == 3
    for (image, label), (batch_image, batch_label) in zip(plain, batched, strict=True):
        assert batch_image.dtype == torch.float32 and batch_label.dtype == torch.int64
        torch.testing.assert_close(batch_image, image, rtol=0, atol=0)
        torch.testing.assert_close(batch_label, label, rtol=0, atol=0)
    dataset.augment = None
    images, labels = dataset.read_batch([(7, 0), 2])
    np.testing.assert_array_equal(images[0].numpy(), stored(shards[1], 4)[0])
    np.testing.assert_array_equal(labels[1].numpy(), stored(shards[0], 0)[1])
    half, small = next(
        iter(batch_loader(dataset, sampler, 4, image_dtype=torch.float16, label_dtype=torch.uint8, num_workers=workers))
    )
    assert half.dtype == torch.float16 and small.dtype == torch.uint8
    image, label = next(iter(DataLoader(dataset, batch_size=4, sampler=sampler)))
    torch.testing.assert_close(half.float(), image)
    torch.testing.assert_close(small.long(), label, rtol=0, atol=0)


class PreviousBatchPath(Dataset):
    """The batch path before issue 23 (the reference): an item is a list of keys, read into new tensors by
    `read_batch` in a worker and sent to the main process through DataLoader's shared memory."""

    def __init__(self, dataset: ShardDataset, image_dtype: torch.dtype, label_dtype: torch.dtype) -> None:
        self.dataset, self.image_dtype, self.label_dtype = dataset, image_dtype, label_dtype

    def __getitem__(self, keys):
        return self.dataset.read_batch(keys, image_dtype=self.image_dtype, label_dtype=self.label_dtype)


@pytest.mark.parametrize("ranks", [1, 3])
def test_staged_batches_equal_the_previous_paths_bit_for_bit_over_epochs_ranks_and_a_resume(tmp_path, ranks):
    """Same batches, order and augmentation as before the staging slots, for every rank's part, over several
    epochs (persistent workers), with a partial last batch and a resume inside an epoch; a batch stays intact
    while the loader's workers fill the other slots, until HOLD more batches have been received."""
    shards = [
        make_shard(tmp_path / "a.h5", 23, channels=4, size=16, seed=1),
        make_shard(tmp_path / "b.h5", 18, channels=4, size=16, seed=2, compression="lzf"),
    ]
    augment = Augmentation(flip_p=0.5, channel_dropout_p=0.3, erase_p=0.5, erase_size=(2, 9))
    dataset = ShardDataset([(shards[0], None), (shards[1], np.arange(17, -1, -1))], augment=augment, seed=4)
    dtypes = {"image_dtype": torch.float16, "label_dtype": torch.uint8}
    for rank in range(ranks):
        sampler = EpochSampler(len(dataset), seed=6)
        staged = batch_loader(dataset, sampler, 5, rank=rank, ranks=ranks, num_workers=2, **dtypes)
        reference = PreviousBatchPath(dataset, **dtypes)
        for epoch, skip in ((1, 0), (2, 0), (2, 15), (3, 0)):
            sampler.set_epoch(epoch, skip)
            expected = list(DataLoader(reference, batch_size=None, sampler=RankBatches(sampler, 5, rank, ranks)))
            assert len(expected) == len(staged) == -(-(len(dataset) - skip) // 5)
            held: list[tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = []
            for step, batch in enumerate(staged):
                held = [*held[1 - BatchLoader.HOLD :], (batch, expected[step])]
                time.sleep(0.02)  # the workers fill every other slot meanwhile
                for (image, label), (image_then, label_then) in held:
                    assert image.dtype == torch.float16 and label.dtype == torch.uint8
                    assert torch.equal(image, image_then) and torch.equal(label, label_then), (epoch, step)
            assert step == len(expected) - 1


def test_the_staging_slots_are_allocated_once_and_shared_with_the_workers(shards):
    dataset = ShardDataset([(shards[0], None), (shards[1], None)])
    sampler = EpochSampler(len(dataset), seed=1)
    staged = batch_loader(dataset, sampler, 4, num_workers=2, prefetch_factor=3)
    assert staged.images.shape == (2 * 3 + BatchLoader.HOLD, 4, 3, 8, 8) and staged.images.is_shared()
    memory = staged.images.data_ptr(), staged.labels.data_ptr()
    for epoch in range(3):
        sampler.set_epoch(epoch)
        for image, label in staged:
            assert staged.images.data_ptr() <= image.data_ptr() < staged.images.data_ptr() + staged.images.nbytes
            assert staged.labels.data_ptr() <= label.data_ptr() < staged.labels.data_ptr() + staged.labels.nbytes
    assert (staged.images.data_ptr(), staged.labels.data_ptr()) == memory
    in_process = batch_loader(dataset, sampler, 4)
    assert in_process.images.shape[0] == BatchLoader.HOLD and not in_process.images.is_shared()


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=NO_GPU)])
def test_the_trainings_batches_reach_the_device_as_the_previous_path_gave_them(tmp_path, device):
    """Through the training's loader (page-locked slots on a GPU) and `Runtime.on_device` (copies on a side
    stream, each waited for before its slot may be reused), with workers running ahead of a slow consumer."""
    path = make_shard(tmp_path / "a.h5", 29, channels=4, size=16, seed=3)
    dataset = ShardDataset([(path, None)], augment=Augmentation(0.5, 0.3, 0.5, (2, 9)), seed=1)
    runtime = resolve_runtime({"device": device, "workers": 2, "amp": False, "channels_last": False})
    sampler = EpochSampler(len(dataset), seed=2)
    staged = make_loader(dataset, sampler, 4, runtime)
    reference = PreviousBatchPath(dataset, runtime.batch_dtype, torch.uint8)
    if runtime.cuda:
        assert staged.images.is_pinned() is False  # page-locked once the workers exist
    for epoch in (1, 2):
        sampler.set_epoch(epoch)
        expected = list(DataLoader(reference, batch_size=None, sampler=RankBatches(sampler, 4)))
        received = []
        for image, label in runtime.on_device(staged):
            time.sleep(0.02)  # the workers fill every other slot meanwhile
            received.append((image.to("cpu", copy=True), label.to("cpu", copy=True)))
        assert len(received) == len(expected) == 8
        for (image, label), (image_then, label_then) in zip(received, expected, strict=True):
            assert image.device.type == "cpu" and image.dtype == torch.float32 and label.dtype == torch.int64
            assert torch.equal(image, image_then.float()) and torch.equal(label, label_then.long())
    assert staged.images.is_pinned() == runtime.cuda
