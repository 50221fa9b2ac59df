"""Glue between Snakemake's script directive and the package: logging to the rule's log file."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

log = logging.getLogger("snowcloud")


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
