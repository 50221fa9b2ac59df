"""A `torch.utils.data.Dataset` over HDF5 shards, and the deterministic epoch order training resumes from.

Items are addressed by a global index over the members (shard, patch indices or None for all). HDF5 handles
are opened lazily in the process that reads (keyed by its pid), so no handle opened before a DataLoader forks
its workers is used by them. An unfiltered one-patch chunk is read with one direct chunk read into a reused
float16 buffer and converted once into the output.

Two ways to batch, giving the same batches: a plain ``DataLoader(dataset, batch_size, sampler=...)`` (item by
item, stacked by the default collate), or :func:`batch_loader`, where each worker reads a whole batch in shard
order straight into one of a few staging slots in shared memory allocated once (no per-item tensors, no second
copy, and nothing for the main process to receive but the slot's number; page-locked in place for a GPU):
about twice as fast to read (benchmarks/bench_shards.py), and a twentieth of the main process's time per batch
(`bench_shards.py --main-process`).
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from snowcloud.shards import open_shard, patch_datasets

Member = tuple[str | Path, Sequence[int] | np.ndarray | None]
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
Key = int | tuple[int, int]


def seeded_rng(*keys: int) -> np.random.Generator:
    """A generator determined by integer keys (seed, epoch, index ...), negative keys allowed."""
    return np.random.default_rng([int(key) % 2**64 for key in keys])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits items 0..n-1: a permutation fixed by (seed, epoch)."""
    return seeded_rng(seed, epoch).permutation(n)


def is_direct(dataset: h5py.Dataset) -> bool:
    """Whether each patch of a (N, ...) dataset is one unfiltered chunk (readable with a direct chunk read)."""
    return dataset.chunks == (1, *dataset.shape[1:]) and dataset.id.get_create_plist().get_nfilters() == 0


def read_patch(
    dataset: h5py.Dataset, index: int, out: np.ndarray | None = None, direct: bool | None = None
) -> np.ndarray:
    """Patch `index` of a (N, ...) dataset, into `out` (C-contiguous, the patch's shape and dtype) if given."""
    if out is None:
        out = np.empty(dataset.shape[1:], dtype=dataset.dtype)
    if is_direct(dataset) if direct is None else direct:
        dataset.id.read_direct_chunk((index,) + (0,) * (dataset.ndim - 1), out=out.reshape(-1).view(np.uint8))
    else:
        dataset.read_direct(out, np.s_[index])
    return out


@dataclass
class _Handle:
    """One process's open shard, its two datasets, whether they allow direct chunk reads, and read buffers."""

    file: h5py.File
    image: h5py.Dataset
    label: h5py.Dataset
    direct: tuple[bool, bool]
    image_buffer: np.ndarray
    label_buffer: np.ndarray

    @classmethod
    def open(cls, path: str) -> _Handle:
        shard = open_shard(path)
        image, label = patch_datasets(shard)
        return cls(
            shard,
            image,
            label,
            (is_direct(image), is_direct(label)),
            np.empty(image.shape[1:], image.dtype),
            np.empty(label.shape[1:], label.dtype),
        )

    def read(self, local: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored patch in this handle's reused buffers (overwritten by the next read)."""
        read_patch(self.image, local, self.image_buffer, self.direct[0])
        read_patch(self.label, local, self.label_buffer, self.direct[1])
        return self.image_buffer, self.label_buffer


def _key(key: Key, epoch: int) -> tuple[int, int]:
    return (int(key[0]), int(key[1])) if isinstance(key, tuple) else (int(key), epoch)


class ShardDataset(Dataset):
    """Patches of many shards: item i -> (float32 image (C, P, P), int64 label (P, P)).

    `members`: (shard path, patch indices or None for every patch), in order. `augment(image, label, rng)`
    gets the stored numpy arrays (float16 (C, P, P), uint8 (P, P)) and a generator fixed by (seed, epoch, i), and
    returns augmented copies in the same dtypes. A key is an index or an (index, epoch) pair (what
    :class:`EpochSampler` yields), so that augmentation stays reproducible with persistent workers; a bare index
    uses the epoch of :meth:`set_epoch`.
    """

    def __init__(self, members: Sequence[Member], augment: Augment | None = None, seed: int = 0) -> None:
        if not members:
            raise ValueError("ShardDataset needs at least one shard")
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.paths: list[str] = []
        self.indices: list[np.ndarray | None] = []
        lengths = []
        for path, indices in members:
            length, shape = self._inspect(path, indices)
            if not self.paths:
                self.channels, self.patch_size = shape[0], shape[1]
            elif shape != (self.channels, self.patch_size, self.patch_size):
                raise ValueError(f"{path}: patches {shape} differ from those of {self.paths[0]}")
            self.paths.append(str(path))
            self.indices.append(None if indices is None else np.asarray(indices, dtype=np.int64))
            lengths.append(length)
        self.offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self._handles: dict[int, _Handle] = {}
        self._pid: int | None = None

    @staticmethod
    def _inspect(path: str | Path, indices: Sequence[int] | np.ndarray | None) -> tuple[int, tuple[int, ...]]:
        """Number of member patches and the (C, P, P) shape; checks the indices (the handle is closed again)."""
        with open_shard(path) as shard:
            image, label = patch_datasets(shard)
            n = image.shape[0]
            if label.shape != (n, *image.shape[2:]):
                raise ValueError(f"{path}: label {label.shape} does not match image {image.shape}")
            shape = image.shape[1:]
        if indices is None:
            return n, shape
        indices = np.asarray(indices)
        if indices.size and (indices.min() < 0 or indices.max() >= n):
            raise ValueError(f"{path}: patch indices outside 0..{n - 1}")
        return int(indices.size), shape

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def set_epoch(self, epoch: int) -> None:
        """The epoch that seeds augmentation of items addressed by a bare index."""
        self.epoch = epoch

    def locate(self, index: int) -> tuple[int, int]:
        """(member number, patch index in its shard) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} outside 0..{len(self) - 1}")
        member = int(np.searchsorted(self.offsets, index, side="right")) - 1
        local = index - int(self.offsets[member])
        indices = self.indices[member]
        return member, local if indices is None else int(indices[local])

    def _handle(self, member: int) -> _Handle:
        pid = os.getpid()
        if self._pid != pid:  # a new worker process: never reuse the parent's handles
            self._handles, self._pid = {}, pid
        if member not in self._handles:
            self._handles[member] = _Handle.open(self.paths[member])
        return self._handles[member]

    def _stored(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored patch (float16, uint8) in reused buffers."""
        member, local = self.locate(index)
        return self._handle(member).read(local)

    def _augmented(self, index: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored patch augmented, in the stored dtypes (flips and zeroing need no float32: the values, and
        so the training, are the same, with a third of the bytes moved)."""
        image, label = self.augment(*self._stored(index), seeded_rng(self.seed, epoch, index))
        return np.ascontiguousarray(image), np.ascontiguousarray(label)

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = _key(key, self.epoch)
        image, label = self._augmented(index, epoch) if self.augment is not None else self._stored(index)
        return torch.from_numpy(image).to(torch.float32, copy=True), torch.from_numpy(label).to(torch.int64, copy=True)

    def read_batch(
        self,
        keys: Sequence[Key],
        out: tuple[torch.Tensor, torch.Tensor] | None = None,
        image_dtype: torch.dtype = torch.float32,
        label_dtype: torch.dtype = torch.int64,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Items stacked: (float32 (B, C, P, P), int64 (B, P, P)), read in shard order, converted straight into
        the output: `out` (images, labels) with B rows if given (their dtypes then rule), else new tensors of
        `image_dtype` and `label_dtype`. Float16 images and uint8 labels move a half and an eighth of the bytes
        (the shards hold float16 and uint8, so nothing is lost); the caller converts on the device."""
        keys = [_key(key, self.epoch) for key in keys]
        size = (self.patch_size, self.patch_size)
        images, labels = out or (
            torch.empty((len(keys), self.channels, *size), dtype=image_dtype),
            torch.empty((len(keys), *size), dtype=label_dtype),
        )
        for position in sorted(range(len(keys)), key=lambda k: self.locate(keys[k][0])):
            index, epoch = keys[position]
            image, label = self._augmented(index, epoch) if self.augment is not None else self._stored(index)
            images[position].copy_(torch.from_numpy(image))
            labels[position].copy_(torch.from_numpy(label))
        return images, labels

    def close(self) -> None:
        """Close this process's handles (call before forking workers if the parent read items)."""
        for handle in self._handles.values():
            handle.file.close()
        self._handles = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_handles"], state["_pid"] = {}, None
        return state


def part_sizes(total: int, parts: int) -> list[int]:
    """How a batch of `total` items is cut into `parts` contiguous parts (the first ones one larger)."""
    base, extra = divmod(total, parts)
    return [base + (part < extra) for part in range(parts)]


class RankBatches(Sampler):
    """The batches of `batch_size` keys of `sampler`'s order (the last may be partial), each cut into `ranks`
    contiguous parts (:func:`part_sizes`); yields part `rank` of each. With one rank: the whole batches."""

    def __init__(self, sampler: Sampler, batch_size: int, rank: int = 0, ranks: int = 1) -> None:
        if not 0 <= rank < ranks:
            raise ValueError(f"rank {rank} outside 0..{ranks - 1}")
        self.sampler, self.batch_size, self.rank, self.ranks = sampler, batch_size, rank, ranks

    def __iter__(self) -> Iterator[list[Key]]:
        for batch in BatchSampler(self.sampler, self.batch_size, drop_last=False):
            sizes = part_sizes(len(batch), self.ranks)
            start = sum(sizes[: self.rank])
            yield batch[start : start + sizes[self.rank]]

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.batch_size)


class _Slots(Dataset):
    """A ShardDataset addressed by (slot, keys): the batch is read straight into staging slot `slot` of
    `images` and `labels`, and only (slot, batch size) goes back to the main process."""

    def __init__(self, dataset: ShardDataset, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.dataset, self.images, self.labels = dataset, images, labels

    def __getitem__(self, item: tuple[int, Sequence[Key]]) -> tuple[int, int]:
        slot, keys = item
        self.dataset.read_batch(keys, out=(self.images[slot, : len(keys)], self.labels[slot, : len(keys)]))
        return slot, len(keys)


class _SlotSampler(Sampler):
    """(slot, keys) for each batch of `batches`: the slots are taken in turn, counting on across epochs."""

    def __init__(self, batches: RankBatches, slots: int) -> None:
        self.batches, self.slots, self.issued = batches, slots, 0

    def __iter__(self) -> Iterator[tuple[int, list[Key]]]:
        for keys in self.batches:
            slot, self.issued = self.issued % self.slots, self.issued + 1
            yield slot, keys

    def __len__(self) -> int:
        return len(self.batches)


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool, pinned: bool = False) -> torch.Tensor:
    """An uninitialised tensor, in shared memory when `shared` (its pages are allocated when first written), else
    in pinned memory when `pinned`."""
    if not shared:
        return torch.empty(shape, dtype=dtype, pin_memory=pinned)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * dtype.itemsize)
    return torch.empty(0, dtype=dtype).set_(storage).view(shape)


def _page_lock(tensors: Sequence[torch.Tensor]) -> None:
    """Page-lock the memory of CPU tensors where it lies (cudaHostRegister, as PyTorch's own shared and pinned
    checkpoint buffers do), so that copies from it to a GPU are asynchronous; unlocked when a tensor is freed.
    A refusal is an error (CUDA would report it again at the next kernel launch)."""
    cudart = torch.cuda.cudart()
    for tensor in tensors:
        nbytes = tensor.untyped_storage().nbytes()
        error = cudart.cudaHostRegister(tensor.data_ptr(), nbytes, 1)  # 1: cudaHostRegisterPortable
        if error != cudart.cudaError.success:
            raise RuntimeError(
                f"could not pin {nbytes >> 20} MiB of the loader's batch staging memory (shared memory, "
                f"{cudart.cudaGetErrorString(error)}): lower training.workers (the memory grows with the workers)"
            )
        weakref.finalize(tensor, cudart.cudaHostUnregister, tensor.data_ptr())


class BatchLoader:
    """(images, labels) batches of a ShardDataset in a sampler's order, each read whole by one worker straight
    into one of a few staging slots allocated once in shared memory (page-locked for the GPU with `pin_memory`);
    the main process receives only the slot's number and yields views of it, so it copies nothing and maps
    nothing per batch (issue 23: before, each batch came as new shared memory to be received, and pinned by
    a copy).

    A batch's tensors stay valid until `HOLD` more batches have been received from the same loader: a copy to
    the device launched from a batch must be finished by then (`Runtime.on_device` waits for it). With workers,
    DataLoader reads at most `prefetch_factor` batches ahead per worker, so `workers * prefetch_factor + HOLD`
    slots are never overwritten early. Workers persist across epochs: they are forked once, before the shared
    memory is page-locked (memory pinned before a fork need not be mapped in the child).
    """

    HOLD = 2

    def __init__(
        self,
        dataset: ShardDataset,
        sampler: Sampler,
        batch_size: int,
        image_dtype: torch.dtype = torch.float32,
        rank: int = 0,
        ranks: int = 1,
        label_dtype: torch.dtype = torch.int64,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int = 2,
        **options: Any,
    ) -> None:
        batches = RankBatches(sampler, batch_size, rank, ranks)
        slots = num_workers * prefetch_factor + self.HOLD
        rows, size = part_sizes(batch_size, ranks)[rank], dataset.patch_size
        shared, pin = num_workers > 0, pin_memory and torch.cuda.is_available()
        self.images = _empty((slots, rows, dataset.channels, size, size), image_dtype, shared, pin)
        self.labels = _empty((slots, rows, size, size), label_dtype, shared, pin)
        self.lock_pending = pin and shared  # shared memory is page-locked once the workers exist
        self.loader = DataLoader(
            _Slots(dataset, self.images, self.labels),
            batch_size=None,
            sampler=_SlotSampler(batches, slots),
            num_workers=num_workers,
            persistent_workers=num_workers > 0,
            prefetch_factor=prefetch_factor if num_workers else None,
            **options,
        )

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        received = iter(self.loader)  # the first time, this starts the workers
        if self.lock_pending:
            _page_lock([self.images, self.labels])
            self.lock_pending = False
        for slot, rows in received:
            yield self.images[slot, :rows], self.labels[slot, :rows]

    def __len__(self) -> int:
        return len(self.loader)


def batch_loader(
    dataset: ShardDataset,
    sampler: Sampler,
    batch_size: int,
    image_dtype: torch.dtype = torch.float32,
    rank: int = 0,
    ranks: int = 1,
    label_dtype: torch.dtype = torch.int64,
    **options: Any,
) -> BatchLoader:
    """Batches of `dataset` in `sampler`'s order, each built whole by one worker into staging memory allocated
    once (:class:`BatchLoader`; images float32 unless `image_dtype` says float16, labels int64 unless
    `label_dtype` says uint8); in a data-parallel training of `ranks` processes, only part `rank` of each batch
    (:class:`RankBatches`). `options` go to DataLoader (num_workers, worker_init_fn, ...), except `pin_memory`
    (the staging memory is page-locked in place) and `prefetch_factor` (batches read ahead per worker)."""
    return BatchLoader(dataset, sampler, batch_size, image_dtype, rank, ranks, label_dtype, **options)


class EpochSampler(Sampler):
    """Yields (index, epoch) keys in :func:`epoch_order` (or 0..n-1 when not shuffling).

    `set_epoch(epoch, skip)` selects the epoch and skips its first `skip` items (resume inside an epoch);
    `limit` caps the items per epoch (steps_per_epoch x batch_size), taken from the front of the order.
    """

    def __init__(self, n: int, seed: int, shuffle: bool = True, limit: int | None = None) -> None:
        self.n, self.seed, self.shuffle, self.limit = n, seed, shuffle, limit
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = epoch, skip

    def _order(self) -> np.ndarray:
        order = epoch_order(self.n, self.seed, self.epoch) if self.shuffle else np.arange(self.n)
        return order[: self.limit][self.skip :]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return iter([(int(index), self.epoch) for index in self._order()])

    def __len__(self) -> int:
        per_epoch = self.n if self.limit is None else min(self.n, self.limit)
        return max(per_epoch - self.skip, 0)
