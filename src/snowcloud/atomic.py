"""Write outputs under a temporary name beside the target and rename them into place, so that a killed
job never leaves a half-written file that looks whole.

Every temporary a job makes for an output `path` (the file renamed into place, the parts and scratch files
or folders it needs on the way) is named `.{path.name}.tmp-{pid}` followed by `{path.suffix}` or
`.{label}`: one naming scheme, so that the next run of the job finds and removes whatever a killed run
(SIGKILL, an out-of-memory kill, a node failure) left behind (`remove_stale_temporaries`).
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def temporary_path(path: str | Path, pid: int | None = None, label: str | None = None) -> Path:
    """A temporary name in the target's folder (same file system, so the rename is atomic), unique per
    process; with `label`, the name of a further temporary of the same output (a part, a scratch folder)."""
    path = Path(path)
    ending = path.suffix if label is None else f".{label}"
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}{ending}")


def _pid_alive(pid: int) -> bool:
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
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            log.info("removing %s, left by a killed job", candidate)
            if candidate.is_dir() and not candidate.is_symlink():
                shutil.rmtree(candidate, ignore_errors=True)
            else:
                candidate.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path to write to; on success rename it to `path`, on any error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def scratch_folder(path: str | Path, label: str = "scratch") -> Iterator[Path]:
    """A scratch folder for the work of writing `path`, named as its temporaries are (so a killed job's
    is removed by the next run); removed with its contents on exit."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    folder = temporary_path(path, label=label)
    folder.mkdir()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)
