"""Glue between Snakemake and the package: logging to the rule's log file, the planning process's garbage collector,
the locks of a killed Snakemake."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from snowcloud.atomic import pid_alive

log = logging.getLogger("snowcloud")

FULL_COLLECTION_EVERY = 1000  # younger-generation passes between two full ones (Python's default: 10)


def configure_logging(log_path: str | Sequence[str] | None = None, level: int = logging.INFO, mode: str = "w") -> None:
    """Log to stderr and, when given, to the rule's log file or files (opened with `mode`: "a" appends)."""
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    paths = [log_path] if isinstance(log_path, str) else list(log_path or [])
    handlers += [logging.FileHandler(path, mode=mode) for path in paths]
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", handlers=handlers, force=True
    )


def logged(log_path: str | None, function: Callable[..., Any], **kwargs: Any) -> Any:
    """Run one package function for a rule, with its start, end, duration and any error in the log."""
    configure_logging(log_path)
    name = f"{function.__module__}.{function.__name__}"
    start = time.perf_counter()
    log.info("%s starts", name)
    try:
        result = function(**kwargs)
    except Exception:
        log.exception("%s failed after %.1f s", name, time.perf_counter() - start)
        raise
    log.info("%s done in %.1f s", name, time.perf_counter() - start)
    return result


def spare_the_cycle_collector() -> None:
    """Let Python's cycle collector re-walk the Snakemake process's long-lived objects rarely, and not at exit.

    Snakemake keeps every job of the DAG (with its files, wildcards and parameters) alive until it exits, and
    the collector walks all of them in each full pass and once more when the interpreter shuts down: about a
    quarter of the CPU time of a dry run over 5000 scenes (docs/slurm.md, "Planning thousands of scenes").
    Full passes every FULL_COLLECTION_EVERY younger ones (Python 3.11-3.13; 3.14's incremental collector
    ignores that threshold), and at exit what is left is frozen out of the final pass: the operating system
    reclaims the memory. The younger generations, where short-lived cycles die, are collected as before.
    """
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, FULL_COLLECTION_EVERY)
    atexit.register(gc.freeze)


LOCKS = Path(".snakemake/locks")  # Snakemake's lock files ({n}.input.lock, {n}.output.lock), removed at its end
OWNER = "snowcloud-owner.{host}.{pid}"  # beside them: the Snakemake that took them, if it runs its jobs here
LOCAL = "local"


def record_local_owner(locks: Path = LOCKS) -> None:
    """Record this Snakemake as the owner of the locks it has just taken (its `onstart`, which only a run that
    executes its jobs on this host calls): only such a run's locks are released once it is dead."""
    locks.mkdir(parents=True, exist_ok=True)
    (locks / OWNER.format(host=socket.gethostname(), pid=os.getpid())).write_text(LOCAL)


def release_stale_locks(locks: Path = LOCKS) -> None:
    """Remove the locks of a killed Snakemake that ran its jobs on this host.

    Snakemake locks the working directory while it runs and removes the lock folder when it ends; one killed
    with SIGKILL (or by the out-of-memory killer) leaves the locks, and every later run stops with "Directory
    cannot be locked". They are removed when every owner recorded beside them (`record_local_owner`) is a
    process of this host that is gone; locks without such a record (a run through Slurm, whose jobs may still
    be queued, a Snakemake on another host) are left for `snakemake --unlock`. Called as Snakemake reads the
    workflow, before it locks.
    """
    owners = list(locks.glob(OWNER.format(host="*", pid="*")))
    if not owners or not all(_dead_local_owner(owner) for owner in owners):
        return
    for path in [*locks.glob("*.lock"), *owners]:
        log.warning("removing %s, left by a killed Snakemake (%s)", path, ", ".join(owner.name for owner in owners))
        path.unlink(missing_ok=True)


def _dead_local_owner(owner: Path) -> bool:
    host, pid = owner.name.split(".", 1)[1].rsplit(".", 1)
    try:
        local = owner.read_text().strip() == LOCAL
    except OSError:
        return False
    return local and host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid))
