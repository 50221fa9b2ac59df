import os
import subprocess
import sys

import pytest

from snowcloud.atomic import atomic_output, temporary_path


def test_output_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "out.tif"
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        assert not target.exists()
    assert target.read_bytes() == b"half"
    assert list(target.parent.iterdir()) == [target]


def test_an_error_leaves_neither_output_nor_temporary(tmp_path):
    target = tmp_path / "out.h5"
    with pytest.raises(RuntimeError), atomic_output(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_killed_writer_leaves_a_temporary_that_the_next_write_removes(tmp_path):
    target = tmp_path / "out.h5"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = temporary_path(target, pid=int(dead.stdout))
    stale.write_bytes(b"half of a killed job")
    alive = temporary_path(target, pid=os.getppid())  # a live process (e.g. another writer) keeps its file
    alive.write_bytes(b"in progress")
    with atomic_output(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
    assert not stale.exists() and alive.exists()
