"""Start a data-parallel training: `torchrun` with one process per GPU of this node, each running the entry it
is handed (the train stage hands `train.train_experiment`) as one rank (`python -m snowcloud.training.launch
LAUNCH.json`; the file names the entry as `module:function` and holds its arguments).

The process that calls `launch_ranks` (the `train` rule's) waits for torchrun, passes SIGTERM / SIGUSR1 on to
it (torchrun passes them to the ranks, which save the state and stop together), and fails when it fails.
Rank 0 appends its log lines to the caller's log files; the other ranks log warnings and errors to stderr.
"""

from __future__ import annotations

import importlib
import json
import logging
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from snowcloud.atomic import atomic_output
from snowcloud.training.distributed import World
from snowcloud.training.loop import TrainingInterrupted
from snowcloud.training.runtime import STOP_SIGNALS
from snowcloud.workflow import configure_logging

log = logging.getLogger(__name__)

LAUNCH_FILE = "launch.json"


def launch_command(processes: int, launch_file: Path) -> list[str]:
    """torchrun on this node only (`--standalone`: a free port, no rendezvous server)."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={processes}",
        "-m",
        __name__,
        str(launch_file),
    ]


def log_files_for_ranks() -> list[str]:
    """This process's log files, reopened for appending so that rank 0's lines and ours do not overwrite each
    other."""
    paths = []
    for handler in logging.getLogger().handlers:
        if isinstance(handler, logging.FileHandler):
            old = handler.setStream(open(handler.baseFilename, "a", encoding=handler.encoding))  # noqa: SIM115
            if old is not None:
                old.close()
            paths.append(handler.baseFilename)
    return paths


def entry_name(entry: Callable[..., Any]) -> str:
    """`module:function` of a module-level function, the way a rank finds it again (see `entry_of`)."""
    return f"{entry.__module__}:{entry.__qualname__}"


def entry_of(name: str) -> Callable[..., Any]:
    """The function named `module:function` (see `entry_name`)."""
    module, function = name.split(":")
    return getattr(importlib.import_module(module), function)


def launch_ranks(
    processes: int, entry: Callable[..., Any], arguments: Mapping[str, Any], state_dir: str | Path
) -> None:
    """Run `entry(**arguments)` on `processes` ranks started by torchrun; return when they are done. `entry` is a
    module-level function; the arguments must survive JSON (paths become strings)."""
    launch_file = Path(state_dir) / LAUNCH_FILE
    launch_file.parent.mkdir(parents=True, exist_ok=True)
    spec = {"entry": entry_name(entry), "arguments": dict(arguments), "log_files": log_files_for_ranks()}
    with atomic_output(launch_file) as tmp:
        Path(tmp).write_text(json.dumps(spec, default=str))
    command = launch_command(processes, launch_file)
    log.info("data-parallel training on %d processes: %s", processes, " ".join(command))
    child = subprocess.Popen(command)
    received: list[str] = []

    def forward(signum: int, _frame: FrameType | None) -> None:
        received.append(signal.Signals(signum).name)
        child.send_signal(signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        status = child.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        launch_file.unlink(missing_ok=True)
        if not any(launch_file.parent.iterdir()):  # rank 0 removed the state after writing the outputs
            launch_file.parent.rmdir()
    if status and received:
        raise TrainingInterrupted(
            f"data-parallel training interrupted by {received[0]}; the ranks saved the state in {state_dir}; "
            "rerun to continue"
        )
    if status:
        raise RuntimeError(
            f"data-parallel training on {processes} processes failed (torchrun exit status {status}); the ranks' "
            "errors are logged above"
        )


def main(argv: Sequence[str] | None = None) -> int:
    """One rank: read the launch file, log (rank 0 to the caller's log files), run its entry."""
    (launch_file,) = sys.argv[1:] if argv is None else argv
    spec = json.loads(Path(launch_file).read_text())
    world = World.from_environment() or World()
    configure_logging(spec["log_files"] if world.main else None, logging.INFO if world.main else logging.WARNING, "a")
    try:
        entry_of(spec["entry"])(**spec["arguments"])
    except Exception as error:
        if world.main:
            log.exception("rank 0 of %d failed", world.size)
        else:
            log.error("rank %d of %d stopped: %s", world.rank, world.size, error)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
