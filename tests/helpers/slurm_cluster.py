"""A real single-node Slurm on loopback for the tests: munged, slurmctld and slurmd, started from a private
temporary folder and stopped by their PID files.

The node is called `localhost` (the machine's hostname is not), authentication goes through a private munge
socket and key, and there is no accounting database, so job status comes from `squeue` (`MinJobAge` keeps
finished jobs visible for an hour). The configuration must live at /etc/slurm/slurm.conf: the Slurm executor
plugin's job step drops `SLURM_CONF` from the environment of the `srun` it starts inside each job. The harness
therefore refuses to run where a Slurm configuration it did not write already exists (a real cluster), and
removes its own configuration when it stops.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import pytest

PROFILE = Path(__file__).resolve().parents[2] / "profiles" / "slurm" / "config.yaml"
SLURM_CONF = Path("/etc/slurm/slurm.conf")
MARKER = "# Written by snowcloud's tests/slurm_cluster.py for a throw-away test cluster."
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "sinfo", "scontrol", "srun")
INSTALL_HINT = "apt-get install slurmctld slurmd slurm-client munge (as .ci/run does)"
PARTITION = "debug"
# Set by .ci/run where the packages are installed: a cluster that does not start is then a failure, not a skip.
REQUIRE_ENV = "SNOWCLOUD_REQUIRE_SLURM"


# What this cluster needs from the profile's SITE block: its one partition, no account, no GPU.
LOCAL_SITE = {"CPU_PARTITION": repr(PARTITION), "GPU_PARTITION": repr(PARTITION), "ACCOUNT": "None", "GPUS": "0"}
# ... and from the plugin: status from squeue (no accounting database), a quick first status check.
LOCAL_OPTIONS = ("--slurm-status-command", "squeue", "--slurm-init-seconds-before-status-checks", "2")


def site_profile(folder: Path, site: dict[str, str] = LOCAL_SITE) -> Path:
    """A copy of profiles/slurm in `folder` with the given SITE definitions (Python expressions) replaced;
    every other line is the repository's."""
    text = PROFILE.read_text()
    for name, value in site.items():
        text, count = re.subn(rf"^(  - {name} = ).*?(\s+#.*)?$", rf"\g<1>{value}\g<2>", text, count=1, flags=re.M)
        if count != 1:
            raise KeyError(f"{PROFILE} has no SITE definition {name}")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(text)
    return folder


class SlurmUnavailable(RuntimeError):
    """Slurm cannot be started on this machine; the message says why."""


def unavailable_reason() -> str | None:
    """Why a test cluster cannot be started here, or None when it can."""
    missing = [name for name in BINARIES if shutil.which(name) is None]
    if missing:
        return f"Slurm is not installed (missing {', '.join(missing)}); install it with: {INSTALL_HINT}"
    if os.geteuid() != 0:
        return "starting slurmctld/slurmd with SlurmUser=root needs root"
    if SLURM_CONF.exists() and MARKER not in SLURM_CONF.read_text():
        return f"{SLURM_CONF} already exists and was not written by these tests: not touching a real cluster"
    other = recorded_cluster()
    if other and daemon_pid(other.root / "slurmctld.pid"):
        return f"the test cluster of another test session is running (state in {other.root})"
    return None


def recorded_cluster() -> SlurmCluster | None:
    """The test cluster that /etc/slurm/slurm.conf was written for, if these tests wrote it."""
    if not SLURM_CONF.exists() or MARKER not in SLURM_CONF.read_text():
        return None
    for line in SLURM_CONF.read_text().splitlines():
        if line.startswith("StateSaveLocation="):
            return SlurmCluster(root=Path(line.split("=", 1)[1]).parent)
    return None


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def process_alive(pid: int) -> bool:
    """True while the process runs (a zombie counts as ended: daemons are re-parented to an init that may never
    reap them)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def daemon_pid(pid_file: Path) -> int | None:
    """The PID in a daemon's PID file while that daemon (named like the file) runs; None otherwise, also when
    the PID now belongs to another program."""
    pid = read_pid(pid_file)
    if pid is None or not process_alive(pid):
        return None
    try:
        name = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None
    return pid if name == pid_file.stem else None


def stop_daemon(pid_file: Path, timeout: float = 15.0) -> None:
    """SIGTERM the daemon named by a PID file, then SIGKILL it if it is still there after `timeout` s."""
    pid = daemon_pid(pid_file)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while process_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if process_alive(pid):
        os.kill(pid, signal.SIGKILL)


def slurm_conf_text(root: Path, cpus: int, memory_mb: int, ctld_port: int, slurmd_port: int) -> str:
    return f"""{MARKER}
# State, logs and PID files are under {root}.
ClusterName=snowcloud-test
SlurmctldHost=localhost
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node advertises the resources of a modest compute node whatever this machine has, so that the
# profile's requests are scheduled unchanged (nothing enforces them without cgroups).
SlurmdParameters=config_overrides
MinJobAge=3600
ReturnToService=2
KillWait=30
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
NodeName=localhost NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName={PARTITION} Nodes=localhost Default=YES MaxTime=INFINITE State=UP
"""


@dataclass
class SlurmCluster:
    """One throw-away Slurm: `start()` brings it up (about a second), `stop()` cancels its jobs and ends it."""

    cpus: int = 16
    memory_mb: int = 128000
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="snowcloud-slurm-")))
    start_seconds: float | None = None

    @property
    def pid_files(self) -> list[Path]:
        """In stopping order."""
        return [self.root / "slurmd.pid", self.root / "slurmctld.pid", self.root / "munge" / "munged.pid"]

    def start(self, timeout: float = 60.0) -> None:
        reason = unavailable_reason()
        if reason:
            shutil.rmtree(self.root, ignore_errors=True)
            raise SlurmUnavailable(reason)
        stop_stale_cluster()
        began = time.perf_counter()
        atexit.register(self.stop)
        try:
            self.root.chmod(0o755)  # munged wants its socket's folders searchable by everyone
            for name in ("munge", "state", "spool"):
                (self.root / name).mkdir(exist_ok=True)
            self._start_munge()
            SLURM_CONF.parent.mkdir(parents=True, exist_ok=True)
            SLURM_CONF.write_text(slurm_conf_text(self.root, self.cpus, self.memory_mb, free_port(), free_port()))
            self._run_daemon(["slurmctld", "-f", str(SLURM_CONF)], "slurmctld.log")
            self._run_daemon(["slurmd", "-f", str(SLURM_CONF), "-N", "localhost"], "slurmd.log")
            self._wait_for_idle_node(timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.perf_counter() - began

    def _start_munge(self) -> None:
        munge = self.root / "munge"
        key = munge / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        subprocess.run(
            [
                "munged",
                f"--key-file={key}",
                f"--socket={munge}/munge.socket",
                f"--pid-file={munge}/munged.pid",
                f"--log-file={munge}/munged.log",
                f"--seed-file={munge}/munged.seed",
            ],
            check=True,
            capture_output=True,
            text=True,
        )

    def _run_daemon(self, command: list[str], log_name: str) -> None:
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            raise SlurmUnavailable(
                f"{command[0]} did not start (exit {done.returncode}): {done.stderr.strip()}\n{self.log_tail(log_name)}"
            )

    def _wait_for_idle_node(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            state = run_slurm("sinfo", "--noheader", "--nodes=localhost", "--format=%T", check=False).strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise SlurmUnavailable(
            f"the node did not become idle within {timeout:.0f} s (state {state!r})\n"
            f"{self.log_tail('slurmctld.log')}\n{self.log_tail('slurmd.log')}"
        )

    def log_tail(self, name: str, lines: int = 20) -> str:
        path = self.root / name
        if not path.exists():
            return f"({path} does not exist)"
        return f"--- last lines of {path}:\n" + "\n".join(path.read_text().splitlines()[-lines:])

    def stop(self) -> None:
        """Cancel every job, stop slurmd, slurmctld and munged by their PID files, remove the configuration."""
        ours = SLURM_CONF.exists() and str(self.root) in SLURM_CONF.read_text()
        if ours and daemon_pid(self.root / "slurmctld.pid"):
            run_slurm("scancel", "--full", "--user=root", check=False)
            wait_until(lambda: not run_slurm("squeue", "--noheader", "--format=%i", check=False).strip(), 60)
        for pid_file in self.pid_files:
            stop_daemon(pid_file)
        if ours:
            SLURM_CONF.unlink()
        shutil.rmtree(self.root, ignore_errors=True)

    def max_job_id(self) -> int:
        """The largest job id Slurm knows (finished ones included), 0 when none."""
        return max((job.id for job in self.jobs()), default=0)

    def jobs(self, after: int = 0) -> list[SlurmJob]:
        """Jobs (each task of a job array as one) with an id above `after`, oldest first: finished ones stay listed
        for MinJobAge (1 h)."""
        out = run_slurm("squeue", "--noheader", "--states=all", "--format=%F|%K|%T|%S|%e|%j|%k")
        jobs = [SlurmJob.from_squeue(line) for line in out.splitlines() if line.strip()]
        return sorted((job for job in jobs if job.id > after), key=lambda job: (job.id, job.task or 0))


@dataclass(frozen=True)
class SlurmJob:
    id: int  # the id sbatch returned: shared by the tasks of a job array
    task: int | None  # the index of an array task, None for a plain job
    state: str
    started: datetime | None  # None until it starts
    ended: datetime | None  # None until it ends
    name: str
    comment: str

    @classmethod
    def from_squeue(cls, line: str) -> SlurmJob:
        job_id, task, state, started, ended, name, comment = line.split("|", 6)
        return cls(
            int(job_id),
            None if task == "N/A" else int(task),
            state,
            _squeue_time(started),
            _squeue_time(ended),
            name,
            comment.strip(),
        )

    @property
    def key(self) -> str:
        """How scontrol and scancel name it: 12, or 12_3 for task 3 of array 12."""
        return str(self.id) if self.task is None else f"{self.id}_{self.task}"

    @property
    def rule(self) -> str:
        """The Snakemake rule, from the comment the executor plugin sets: rule_{name}[_wildcards_{...}] (an array
        carries the wildcards of its first job)."""
        return self.comment.removeprefix("rule_").split("_wildcards_")[0]


def _squeue_time(text: str) -> datetime | None:
    """squeue's %S / %e (2026-11-30T00:43:38), None for N/A or Unknown (not started, not ended)."""
    try:
        return datetime.fromisoformat(text)
    except ValueError:
        return None


def run_slurm(*command: str, check: bool = True, timeout: float = 30.0) -> str:
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed (exit {done.returncode}): {done.stderr.strip()}")
    return done.stdout


def wait_until(condition: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return condition()


def stop_stale_cluster() -> None:
    """Clean up after a test cluster whose session was killed: its leftover daemons, configuration and files."""
    stale = recorded_cluster()
    if stale:
        stale.stop()
    if SLURM_CONF.exists() and MARKER in SLURM_CONF.read_text():
        SLURM_CONF.unlink()


_SHARED: list[SlurmCluster] = []


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    """One started test cluster for the whole session (modules that import this fixture share it)."""
    if not _SHARED:
        cluster = SlurmCluster()
        try:
            cluster.start()
        except SlurmUnavailable as error:
            if os.environ.get(REQUIRE_ENV) == "1":
                pytest.fail(f"{REQUIRE_ENV}=1 but no test cluster: {error}")
            pytest.skip(f"no Slurm test cluster: {error}")
        _SHARED.append(cluster)
    yield _SHARED[0]
    _SHARED[0].stop()
