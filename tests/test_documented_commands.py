"""Every command README.md and docs/*.md show runs, as a new user runs it, from the install the README's first
command makes (`pip install -e .`, no test extras: pytest brings packages, such as pygments, that a user's
install would lack).

The commands are read from the documents themselves (fenced shell blocks, the README's fenced Python blocks,
each run as one script, and inline code that starts with `snakemake`, `snowcloud` or `python`), so a newly
documented command runs here unless NOT_RUN says why it cannot. They run in the order the documents give them,
in a copy of the repository where the README's demo command (`snakemake --cores all`) has run (the session's
`user_demo`: helpers/user_install.py, which makes a fresh virtual environment, about a minute, unless
SNOWCLOUD_USER_VENV names one that was installed the README's way).
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from helpers.user_install import DEMO_COMMAND, UserDemo, run

pytestmark = pytest.mark.workflow

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Commands that are not run here, each with the reason (a regular expression matched against the command).
NOT_RUN = {
    r"^python3 -m venv": "the install commands themselves: this test makes the same install",
    r"--profile profiles/slurm": "needs a Slurm cluster: tests/test_slurm_profile.py runs it on a real one",
    r"--configfile config/presets/": "needs the thesis data the preset points at; the presets' tests run them on the demo",
    r"^snowcloud demo .*--size 10980": "a full-size tile (minutes, GBs): tests/test_cli.py runs `snowcloud demo` small",
    r"--device cuda": "needs a GPU",
    r"my\.yaml": "a placeholder for the user's own file",
    r"^snowcloud import-thesis": "needs a thesis .pth: tests/test_thesis_import.py imports one saved from a replica of the thesis U-Net",
    r"^python benchmarks/bench_preprocess\.py$": "a full-size tile benchmark (minutes, GBs)",
    r"^python benchmarks/bench_infer\.py": "full-width scenes under three window schemes (many minutes)",
    r"^python benchmarks/bench_workflow\.py": "runs the demo locally and through Slurm (tests/test_slurm_profile.py)",
    r"^python benchmarks/bench_slurm_season\.py": "100 dates through a test Slurm (tests/test_slurm_profile.py)",
    r"^python benchmarks/bench_dag\.py .*--against": "a second checkout of the dry runs that the plain command runs",
    r"^python benchmarks/bench_shard_compression\.py --shard FILE": "FILE stands for a full-size shard of the user's",
    r"^(nice -n 10 )?python benchmarks/bench_season\.py": "full-size tiles through the workflow (an hour, tens of GB)",
    r"^snakemake --forcerun preprocess": "reruns the whole demo; what reruns is tested in tests/test_incremental.py",
    r"^python benchmarks/bench_demo_clouds\.py --run": "reruns the demo in a new directory: `--workdir .` measures this one",
}
FENCED = re.compile(r"```(?:bash|sh|shell|console)\n(.*?)```", re.S)
PYTHON = re.compile(r"```python\n(.*?)```", re.S)  # run from README.md only: the docs' Python blocks are signatures
INLINE = re.compile(r"`((?:snakemake|snowcloud|python3? -m snowcloud) [^`]+|python3? benchmarks/[^`]+)`")


def documented_commands() -> list[tuple[str, str]]:
    """(document, command) in document order: lines of fenced shell blocks, then inline commands."""
    found: list[tuple[str, str]] = []
    for document in DOCUMENTS:
        text = document.read_text()
        for block in FENCED.findall(text):
            for line in block.splitlines():
                command = line.split("  #")[0].strip()
                if command and not command.startswith("#"):
                    found.append((document.name, command))
        if document.name == "README.md":
            found += [(document.name, f"python - <<'PYTHON'\n{block}PYTHON") for block in PYTHON.findall(text)]
        found += [(document.name, command.strip()) for command in INLINE.findall(FENCED.sub("", text))]
    seen: set[str] = set()
    return [(document, command) for document, command in found if not (command in seen or seen.add(command))]


def reason_not_run(command: str) -> str | None:
    return next((reason for pattern, reason in NOT_RUN.items() if re.search(pattern, command)), None)


def test_the_readme_states_the_demo_command_first():
    document, command = documented_commands()[0]
    assert document == "README.md" and command.endswith(f"pip install -e . && {DEMO_COMMAND}")


def test_every_documented_command_runs_from_a_plain_install(user_demo: UserDemo, tmp_path):
    workdir = tmp_path / "snowcloud"
    shutil.copytree(user_demo.workdir, workdir, symlinks=True)  # the commands write into it; others read the original
    venv = user_demo.venv
    failures, ran = [], []
    for document, command in documented_commands():
        if reason_not_run(command) or command == DEMO_COMMAND:
            continue
        done = run(command, workdir, venv, timeout=600)
        ran.append(command)
        if done.returncode != 0:
            failures.append(f"{document}: `{command}` exited {done.returncode}:\n{(done.stdout + done.stderr)[-3000:]}")
    print("ran:", *map(shlex.quote, ran), sep="\n  ")
    assert not failures, "\n\n".join(failures)
    assert any(command.startswith("snakemake --report") for command in ran)
