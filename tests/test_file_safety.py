"""What saving does to files already there: permissions, symlinks, read-only files, leftover temporaries."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import distillmem.files as io_module
from distillmem.files import STALE_SECONDS, atomic_write_bytes

def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("old_mode", [0o600, 0o640, 0o664])
def test_an_existing_file_keeps_its_mode(tmp_path, old_mode):
    path = tmp_path / "set.dm"
    path.write_bytes(b"old")
    path.chmod(old_mode)
    atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"new" and mode(path) == old_mode


def test_a_read_only_file_is_refused_and_kept(tmp_path):
    path = tmp_path / "set.dm"
    path.write_bytes(b"old")
    path.chmod(0o444)
    with pytest.raises(PermissionError, match=f"{path} is read-only; refusing to replace it"):
        atomic_write_bytes(path, b"new")
    assert path.read_bytes() == b"old" and mode(path) == 0o444
    assert [p.name for p in tmp_path.iterdir()] == ["set.dm"]


def test_a_symlink_is_written_through(tmp_path):
    target = tmp_path / "real" / "set.dm"
    target.parent.mkdir()
    target.write_bytes(b"old")
    target.chmod(0o600)
    link = tmp_path / "link.dm"
    link.symlink_to(target)
    assert atomic_write_bytes(link, b"new") == link
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert target.read_bytes() == b"new" and mode(target) == 0o600
    # The temporary lived beside the target, so the rename stayed on its filesystem.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.dm", "real"]
    assert [p.name for p in target.parent.iterdir()] == ["set.dm"]


def test_a_dangling_symlink_creates_its_target(tmp_path):
    target, link = tmp_path / "set.dm", tmp_path / "link.dm"
    link.symlink_to(target)
    atomic_write_bytes(link, b"new")
    assert link.is_symlink() and target.read_bytes() == b"new"


def test_a_read_only_symlink_target_is_refused(tmp_path):
    target, link = tmp_path / "set.dm", tmp_path / "link.dm"
    target.write_bytes(b"old")
    target.chmod(0o444)
    link.symlink_to(target)
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write_bytes(link, b"new")
    assert target.read_bytes() == b"old"


def test_an_unwritable_folder_is_refused(tmp_path, monkeypatch):
    # Tests may run as root, who can write anywhere: let access() answer as for another user.
    real_access = os.access
    monkeypatch.setattr(io_module.os, "access", lambda p, m: Path(p) != tmp_path and real_access(p, m))
    with pytest.raises(PermissionError, match=f"folder {tmp_path} is not writable"):
        atomic_write_bytes(tmp_path / "set.dm", b"new")


def _temporary(folder: Path, name: str, age: float) -> Path:
    path = folder / name
    path.write_bytes(b"left over")
    then = time.time() - age
    os.utime(path, (then, then))
    return path


def test_stale_temporaries_of_the_target_are_removed(tmp_path):
    stale = [
        _temporary(tmp_path, ".set.dm.0123456789abcdef.tmp", STALE_SECONDS + 60),
        _temporary(tmp_path, ".set.dm.a1b2_c3d.tmp", 10 * STALE_SECONDS),  # tempfile.mkstemp's names, earlier versions
    ]
    kept = [
        _temporary(tmp_path, ".set.dm.fedcba9876543210.tmp", 60),  # young: a save may be writing it
        _temporary(tmp_path, ".other.dm.0123456789abcdef.tmp", 10 * STALE_SECONDS),  # another target's
        _temporary(tmp_path, ".set.dm.backup.0123456789abcdef.tmp", 10 * STALE_SECONDS),  # of set.dm.backup
        _temporary(tmp_path, ".set.dm.notes.tmp", 10 * STALE_SECONDS),  # not our pattern
    ]
    atomic_write_bytes(tmp_path / "set.dm", b"new")
    assert not any(p.exists() for p in stale)
    assert all(p.exists() for p in kept)
    assert (tmp_path / "set.dm").read_bytes() == b"new"


def test_a_stale_temporary_that_is_a_folder_or_link_is_left_alone(tmp_path):
    folder = tmp_path / ".set.dm.0123456789abcdef.tmp"
    folder.mkdir()
    victim = _temporary(tmp_path, "victim", 0)
    link = tmp_path / ".set.dm.fedcba9876543210.tmp"
    link.symlink_to(victim)
    for path in (folder, link):
        os.utime(path, (0, 0), follow_symlinks=False)
    atomic_write_bytes(tmp_path / "set.dm", b"new")
    assert folder.is_dir() and link.is_symlink() and victim.exists()


def test_a_folder_that_cannot_be_listed_still_takes_the_save(tmp_path, monkeypatch):
    def unlistable(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(io_module.os, "scandir", unlistable)
    atomic_write_bytes(tmp_path / "set.dm", b"new")
    assert (tmp_path / "set.dm").read_bytes() == b"new"


# files.py is loaded on its own: importing the package would import torch, slow to start.
_SLOW_SAVE = """
import importlib.util, os, sys
spec = importlib.util.spec_from_file_location("files", sys.argv[2])
io = importlib.util.module_from_spec(spec)
spec.loader.exec_module(io)
real_fsync = os.fsync
def fsync_when_told(fd):
    print("writing", flush=True)
    sys.stdin.readline()
    real_fsync(fd)
io.os.fsync = fsync_when_told
io.atomic_write_bytes(sys.argv[1], b"from the other process")
"""


def test_a_save_in_progress_in_another_process_keeps_its_temporary(tmp_path):
    target = tmp_path / "set.dm"
    other = subprocess.Popen(
        [sys.executable, "-c", _SLOW_SAVE, str(target), io_module.__file__],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert other.stdout.readline().strip() == "writing"
        (pending,) = tmp_path.glob(".set.dm.*.tmp")
        atomic_write_bytes(target, b"from this process")
        assert pending.exists() and target.read_bytes() == b"from this process"
        other.stdin.write("go\n")
        other.stdin.flush()
        assert other.wait(timeout=60) == 0
    finally:
        if other.poll() is None:
            other.kill()
            other.wait()
    assert target.read_bytes() == b"from the other process"
    assert [p.name for p in tmp_path.iterdir()] == ["set.dm"]
