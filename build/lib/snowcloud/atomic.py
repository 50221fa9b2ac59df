"""Write outputs under a temporary name beside the target and rename them into place, so that a killed
job never leaves a half-written file that looks whole."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)


def temporary_path(path: str | Path, pid: int | None = None) -> Path:
    """A temporary name in the target's folder (same file system, so the rename is atomic), unique per process."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid() if pid is None else pid}{path.suffix}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: str | Path) -> None:
    """Remove temporaries of `path` left by processes that were killed (SIGKILL, a node failure) mid-write."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.tmp-(\d+){re.escape(path.suffix)}$")
    for candidate in path.parent.glob(f".{path.name}.tmp-*"):
        match = pattern.match(candidate.name)
        if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
            log.info("removing %s, left by a killed job", candidate)
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
