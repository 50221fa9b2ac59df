"""Write outputs under a temporary name beside the target and rename them into place, so that a killed
job never leaves a half-written file that looks whole.

Every temporary a job makes for an output `path` (the file renamed into place, the parts and scratch files
or folders it needs on the way) is named `.{path.name}.tmp-{pid}` followed by `{path.suffix}` or
`.{label}`: one naming scheme, so that the next run of the job finds and removes whatever a killed run
(SIGKILL, an out-of-memory kill, a node failure) left behind (`remove_stale_temporaries`).

While they are written, an error GDAL signals (which rasterio only logs) fails the job (snowcloud.gdal), and
a write that fails for want of space says so: "no space left on <file system> ... (needs about N MB)".
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

from snowcloud.gdal import gdal_errors_raised

log = logging.getLogger(__name__)

MB = 2**20
SPACE_MARGIN = 1.1  # free space asked for beyond a writer's estimate of what it needs
FULL_BELOW = 16 * MB  # a write that fails with less free space than this (a few tiles or chunks) found it full
NO_SPACE_WORDS = ("no space left", "disk quota exceeded", "enospc")


class NoSpaceError(OSError):
    """An output that does not fit on its file system; the message names both and the space needed."""


def temporary_path(path: str | Path, pid: int | None = None, label: str | None = None) -> Path:
    """A temporary name in the target's folder (same file system, so the rename is atomic), unique per
    process; with `label`, the name of a further temporary of the same output (a part, a scratch folder)."""
    path = Path(path)
    ending = path.suffix if label is None else f".{label}"
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}{ending}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove every temporary of `path` (files and folders) left by processes that were killed mid-write."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+)(?:\..+)?$")
    for candidate in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not pid_alive(int(match.group(1))):
            log.info("removing %s, left by a killed job", candidate)
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | Path, needs_bytes: int | None = None) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to `path`, on any error remove it.
    `needs_bytes`, a writer's estimate of the disk space its temporaries and output take, is checked first."""
    path = Path(path)
    tmp = temporary_path(path)
    with _writing(path, needs_bytes) as check:
        try:
            yield tmp
            check()
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


@contextlib.contextmanager
def scratch_folder(path: str | Path, label: str = "scratch", needs_bytes: int | None = None) -> Iterator[Path]:
    """A scratch folder for the work of writing `path`, named as its temporaries are (so a killed job's
    is removed by the next run); removed with its contents on exit."""
    path = Path(path)
    folder = temporary_path(path, label=label)
    with _writing(path, needs_bytes):
        folder.mkdir()
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def _writing(path: Path, needs_bytes: int | None) -> Iterator[Callable[[], None]]:
    """What every write of an output shares: its folder made, stale temporaries removed, the space it needs
    checked, GDAL's errors raised, and a failure for want of space said as such."""
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    if needs_bytes is not None and _free_bytes(path) < needs_bytes * SPACE_MARGIN:
        raise NoSpaceError(_no_space_message(path, needs_bytes))
    free_at_gdal_error: list[int] = []
    try:
        with gdal_errors_raised(str(path), lambda: free_at_gdal_error.append(_free_bytes(path))) as check:
            yield check
    except Exception as error:
        free = free_at_gdal_error or [_free_bytes(path)]
        if _out_of_space(error, free):
            raise NoSpaceError(_no_space_message(path, needs_bytes, free[0]) + f" ({error})") from error
        raise


def _free_bytes(path: Path) -> int:
    return shutil.disk_usage(path.parent).free


def _out_of_space(error: BaseException, free: list[int]) -> bool:
    """Did a write fail for want of space? ENOSPC anywhere in the chain of exceptions, or (GDAL, HDF5 and
    torch do not always pass the reason on) a file system all but full when it failed: `free` holds the free
    bytes then (at GDAL's first error, else now)."""
    chain = []
    while error is not None and error not in chain:
        chain.append(error)
        error = error.__cause__ or error.__context__
    if any(getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT) for e in chain):
        return True
    if any(word in str(e).lower() for e in chain for word in NO_SPACE_WORDS):
        return True
    return free[0] < FULL_BELOW


def _mount_point(path: Path) -> Path:
    path = path.resolve()
    while not os.path.ismount(path) and path != path.parent:
        path = path.parent
    return path


def _no_space_message(path: Path, needs_bytes: int | None, free: int | None = None) -> str:
    """The message of a NoSpaceError; `free`: the free bytes when a write failed (else they are read now)."""
    need = f"needs about {_mb(needs_bytes)} MB, " if needs_bytes else ""
    free_text = f"{_mb(_free_bytes(path))} MB free" if free is None else f"{_mb(free)} MB free when a write failed"
    return (
        f"no space left on {_mount_point(path.parent)} for {path} ({need}{free_text}): "
        "free space there or write the results to a larger file system, then rerun"
    )


def _mb(size: int) -> str:
    return f"{size / MB:.0f}" if size >= 10 * MB else f"{size / MB:.1f}"
