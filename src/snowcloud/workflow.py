"""Glue between Snakemake and the package: logging to the rule's log file, the planning process's garbage collector."""

from __future__ import annotations

import atexit
import gc
import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

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
