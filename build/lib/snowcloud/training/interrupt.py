"""Stop signals: SIGTERM / SIGUSR1 only set a flag that the loop checks after each step."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from snowcloud.training.runtime import STOP_SIGNALS

log = logging.getLogger(__name__)


class StopRequest:
    """Set by a signal handler; read by the training loop."""

    def __init__(self) -> None:
        self.signal_name: str | None = None

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def handler(self, signum: int, _frame: FrameType | None) -> None:
        if self.signal_name is None:
            self.signal_name = signal.Signals(signum).name


@contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Catch SIGTERM and SIGUSR1 in this (main) thread while the block runs; restore the old handlers after."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        log.warning("not in the main thread: SIGTERM/SIGUSR1 will not save the training state")
        yield request
        return
    previous = {signum: signal.signal(signum, request.handler) for signum in STOP_SIGNALS}
    try:
        yield request
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
