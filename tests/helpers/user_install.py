"""The README's first command as a new user runs it: a virtual environment installed the README's way (torch's
CPU build, then `pip install -e .`, no test extras), a copy of the repository, and the demo run there
(`snakemake --cores all`). Used by tests/test_documented_commands.py and tests/test_workflow_demo.py (through
the `user_demo` fixture in conftest.py), so the demo trains once per test session.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_COMMAND = "snakemake --cores all"


@dataclass(frozen=True)
class UserDemo:
    """A finished demo run: the copy of the repository it ran in, and the virtual environment it ran with."""

    workdir: Path
    venv: Path


def user_venv(root: Path) -> Path:
    """A virtual environment installed as the README says (made in `root` unless SNOWCLOUD_USER_VENV names one)."""
    given = os.environ.get("SNOWCLOUD_USER_VENV")
    if given:
        return Path(given)
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "torch==2.13.0"], check=True, timeout=900)
    subprocess.run([*pip, "-e", str(REPO)], check=True, timeout=900)
    return venv


def copy_of_the_repository(target: Path) -> Path:
    """The tracked files of the repository (what a clone holds, links as links: config/presets), without
    anything the workflow made."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.splitlines()
    for name in listed:
        source = REPO / name
        if source.is_symlink():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            (target / name).symlink_to(os.readlink(source))
        elif source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def run(command: str, cwd: Path, venv: Path, timeout: int) -> subprocess.CompletedProcess:
    """`command` in bash, in `cwd`, with `venv` activated, stopped with SIGINT after `timeout` seconds."""
    environment = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "VIRTUAL_ENV")}
    environment |= {"PATH": f"{venv / 'bin'}:{environment['PATH']}", "VIRTUAL_ENV": str(venv)}
    arguments = ["timeout", "-s", "INT", "--kill-after=30", str(timeout), "bash", "-c", command]
    return subprocess.run(arguments, cwd=cwd, env=environment, capture_output=True, text=True)


def run_user_demo(root: Path) -> UserDemo:
    """The README's install, then its demo command in a fresh copy of the repository; fails with the output's
    tail if the demo does."""
    venv = user_venv(root)
    workdir = copy_of_the_repository(root / "snowcloud")
    demo = run(DEMO_COMMAND, workdir, venv, timeout=2400)
    if demo.returncode != 0:
        raise AssertionError(f"`{DEMO_COMMAND}` exited {demo.returncode}:\n{demo.stdout[-3000:]}{demo.stderr[-6000:]}")
    return UserDemo(workdir, venv)
