"""A `torch.utils.data.Dataset` over HDF5 shards, and the deterministic epoch order training resumes from.

Items are addressed by a global index over the members (shard, patch indices or None for all). HDF5 handles
are opened lazily in the process that reads (keyed by its pid), so no handle opened before a DataLoader forks
its workers is used by them. An unfiltered one-patch chunk is read with a single direct chunk read.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

Member = tuple[str | Path, Sequence[int] | np.ndarray | None]
Augment = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]
Key = int | tuple[int, int]


def seeded_rng(*keys: int) -> np.random.Generator:
    """A generator determined by integer keys (seed, epoch, index ...), negative keys allowed."""
    return np.random.default_rng([int(key) % 2**64 for key in keys])


def epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """The order in which epoch `epoch` visits items 0..n-1: a permutation fixed by (seed, epoch)."""
    return seeded_rng(seed, epoch).permutation(n)


def open_shard(path: str | Path) -> h5py.File:
    """Open a shard read-only (HDF5's default locking: set HDF5_USE_FILE_LOCKING=FALSE where a cluster file
    system refuses locks; mixing locking flags on one file in one process is an HDF5 error)."""
    return h5py.File(path, "r")


def read_patch(dataset: h5py.Dataset, index: int) -> np.ndarray:
    """Patch `index` of a (N, ...) dataset; one direct chunk read when it is unfiltered and chunked per patch."""
    shape = dataset.shape[1:]
    if dataset.chunks == (1, *shape) and dataset.id.get_create_plist().get_nfilters() == 0:
        _, raw = dataset.id.read_direct_chunk((index,) + (0,) * len(shape))
        return np.frombuffer(raw, dtype=dataset.dtype).reshape(shape)
    return dataset[index]


class ShardDataset(Dataset):
    """Patches of many shards: item i -> (float32 image (C, P, P), int64 label (P, P)).

    `members`: (shard path, patch indices or None for every patch), in order. `augment(image, label, rng)`
    gets numpy arrays (float32 (C, P, P), int64 (P, P)) and a generator fixed by (seed, epoch, i), and returns
    the two arrays. A key is an index or an (index, epoch) pair (what :class:`EpochSampler` yields), so that
    augmentation stays reproducible with persistent workers; a bare index uses the epoch of :meth:`set_epoch`.
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
        self._files: dict[int, h5py.File] = {}
        self._pid: int | None = None

    @staticmethod
    def _inspect(path: str | Path, indices: Sequence[int] | np.ndarray | None) -> tuple[int, tuple[int, ...]]:
        """Number of member patches and the (C, P, P) shape; checks the indices (the handle is closed again)."""
        with open_shard(path) as shard:
            image, label = shard["image"], shard["label"]
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

    def _file(self, member: int) -> h5py.File:
        pid = os.getpid()
        if self._pid != pid:  # a new worker process: never reuse the parent's handles
            self._files, self._pid = {}, pid
        if member not in self._files:
            self._files[member] = open_shard(self.paths[member])
        return self._files[member]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The stored patch behind a global index, unaugmented: (float32 (C, P, P), int64 (P, P))."""
        member, local = self.locate(index)
        shard = self._file(member)
        image = read_patch(shard["image"], local).astype(np.float32)
        label = read_patch(shard["label"], local).astype(np.int64)
        return image, label

    def __getitem__(self, key: Key) -> tuple[torch.Tensor, torch.Tensor]:
        index, epoch = key if isinstance(key, tuple) else (key, self.epoch)
        image, label = self.read(int(index))
        if self.augment is not None:
            image, label = self.augment(image, label, seeded_rng(self.seed, epoch, index))
            image = np.ascontiguousarray(image, dtype=np.float32)
            label = np.ascontiguousarray(label, dtype=np.int64)
        return torch.from_numpy(image), torch.from_numpy(label)

    def __getitems__(self, keys: Sequence[Key]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A batch, read in shard order (sequential chunks) and returned in the order asked for."""
        order = sorted(range(len(keys)), key=lambda k: self.locate(int(_index(keys[k]))))
        items: list = [None] * len(keys)
        for k in order:
            items[k] = self[keys[k]]
        return items

    def close(self) -> None:
        """Close this process's handles (call before forking workers if the parent read items)."""
        for handle in self._files.values():
            handle.close()
        self._files = {}

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_files"], state["_pid"] = {}, None
        return state


def _index(key: Key) -> int:
    return key[0] if isinstance(key, tuple) else key


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
