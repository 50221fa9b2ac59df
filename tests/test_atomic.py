import os
import subprocess
import sys

import pytest

from snowcloud import atomic
from snowcloud.atomic import atomic_output, scratch_folder, temporary_path


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


def test_the_cleaner_removes_every_temporary_of_a_killed_writer_and_nothing_of_other_outputs(tmp_path):
    target = tmp_path / "20210116T102351.tif"
    dead = int(
        subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    )
    stale = [
        temporary_path(target, pid=dead),
        temporary_path(target, pid=dead, label="level1.part0.tif"),
        temporary_path(target, pid=dead, label="strips.tif"),
    ]
    for path in stale:
        path.write_bytes(b"left by a killed job")
    scratch = temporary_path(target, pid=dead, label="scratch")
    (scratch / "nested").mkdir(parents=True)
    (scratch / "nested" / "mask.tif").write_bytes(b"scratch")
    other = temporary_path(tmp_path / "20210116T102351.tif.aux.xml", pid=dead)  # another output's temporary
    other.write_bytes(b"not ours")
    with scratch_folder(target) as mine:
        assert mine.is_dir() and mine.name == temporary_path(target, label="scratch").name
    assert sorted(tmp_path.iterdir()) == [other]


def test_an_error_that_is_not_about_space_keeps_its_message_while_the_job_has_used_much_of_the_disk(
    tmp_path, monkeypatch
):
    """The preflight asks for the whole estimate; later failures count as no space only on a full disk."""
    calls = []  # 10 GB at the start; 200 MB once the job has written its temporaries

    def free(path):
        calls.append(path)
        return 10 * 2**30 if len(calls) == 1 else 200 * 2**20

    monkeypatch.setattr(atomic, "_free_bytes", free)
    with (
        pytest.raises(ValueError, match="^no valid pixel$"),
        atomic_output(tmp_path / "scene.tif", needs_bytes=8 * 2**30),
    ):
        raise ValueError("no valid pixel")
