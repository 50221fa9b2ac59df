"""GDAL settings shared by the stages that read and write rasters, and GDAL's errors made exceptions."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import rasterio

# rasterio's handler of GDAL's errors logs those it does not raise itself at INFO level, with this text:
# among them the write errors of the tiles GDAL flushes from its threads or on close (a full disk), which
# would otherwise leave a damaged file behind a call that succeeded.
GDAL_ERROR_MESSAGE = "GDAL signalled an error"
RASTERIO_LOGGER = "rasterio"


class GdalWriteError(OSError):
    """An error GDAL signalled while an output was written; the message names the output and GDAL's words."""


def gdal_env(cache_mb: int, **options: str) -> rasterio.Env:
    """A rasterio environment whose GDAL block cache holds `cache_mb` megabytes.

    rasterio hands GDAL_CACHEMAX to GDAL in bytes, so a bare 512 would be a 512-byte cache that makes GDAL
    decode every block again on each read.
    """
    return rasterio.Env(GDAL_CACHEMAX=cache_mb * 2**20, **options)


class _Collector(logging.Handler):
    def __init__(self, on_first_error: Callable[[], None] | None) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []
        self.on_first_error = on_first_error

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.getMessage().startswith(GDAL_ERROR_MESSAGE):
            if not self.messages and self.on_first_error is not None:
                self.on_first_error()
            self.messages.append(record.getMessage().removeprefix(GDAL_ERROR_MESSAGE + ": "))


@contextlib.contextmanager
def gdal_errors_raised(what: str, on_first_error: Callable[[], None] | None = None) -> Iterator[Callable[[], None]]:
    """Raise GdalWriteError naming `what` when GDAL signals an error (in any thread) while the block runs
    and the block does not fail by itself (if it does, its error carries GDAL's as a note). The block gets a
    function that raises at once if there was one (before an output is renamed into place);
    `on_first_error()` runs as the first error comes (to see the state that caused it)."""
    collector = _Collector(on_first_error)
    logger = logging.getLogger(RASTERIO_LOGGER)
    level = logger.level
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.addHandler(collector)

    def check() -> None:
        if collector.messages:
            raise GdalWriteError(_message(what, collector.messages))

    try:
        yield check
    except BaseException as error:
        if collector.messages:
            error.add_note(_message(what, collector.messages))
        raise
    finally:
        logger.removeHandler(collector)
        logger.setLevel(level)
    check()


def _message(what: str, messages: list[str]) -> str:
    shown = "; ".join(dict.fromkeys(messages[:20]))
    return f"writing {what} failed: GDAL signalled {len(messages)} error(s): {shown}"
