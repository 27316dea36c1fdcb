"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file distillmem and its integrations write (``DistilledSet.save``, PNG
grids, memory checkpoints, results JSON) goes through ``atomic_write_bytes``,
with these rules:

- a symlink is written through: the file it points to is replaced, the link stays;
- an existing file keeps its permission bits; one without write permission
  (e.g. mode 0444) is refused with PermissionError rather than replaced;
- the bytes go to a hidden ``.NAME.<16 hex digits>.tmp`` beside the target,
  are fsynced, then renamed over it;
- such temporaries of the same target that are older than ``STALE_SECONDS``
  were left by a killed save and are removed by the next save; younger ones
  may belong to a save still running in another process and are left alone.
"""

from __future__ import annotations

import os
import re
import secrets
import stat
import time
from pathlib import Path

#: A temporary untouched this long is taken as left behind by a killed save.
STALE_SECONDS = 15 * 60


def output_target(path: str | os.PathLike) -> Path:
    """The file a write to ``path`` replaces (symlinks followed), once it is known to be writable."""
    target = Path(os.path.realpath(path))
    shown = f"{path}" if target == Path(path) else f"{path} (-> {target})"
    if target.is_dir():
        raise IsADirectoryError(f"{shown} is a directory, not a file path")
    if not target.parent.is_dir():
        raise FileNotFoundError(f"cannot write {shown}: folder {target.parent} does not exist")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {shown}: folder {target.parent} is not writable")
    if target.exists() and not (stat.S_IMODE(target.stat().st_mode) & 0o222 and os.access(target, os.W_OK)):
        raise PermissionError(f"{shown} is read-only; refusing to replace it (make it writable or choose another path)")
    return target


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically under the rules above; returns ``path``."""
    target = output_target(path)
    remove_stale_temporaries(target)
    if target.exists():
        mode = stat.S_IMODE(target.stat().st_mode) & 0o777
    else:
        umask = os.umask(0)
        os.umask(umask)
        mode = 0o666 & ~umask
    tmp = target.with_name(f".{target.name}.{secrets.token_hex(8)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return Path(path)


def _temporary_pattern(target: Path) -> re.Pattern[str]:
    # 16 hex digits: ours; 8 of [a-z0-9_]: tempfile.mkstemp's, used by earlier versions.
    return re.compile(re.escape(f".{target.name}.") + r"(?:[0-9a-f]{16}|[a-z0-9_]{8})\.tmp")


def remove_stale_temporaries(target: Path, max_age: float = STALE_SECONDS) -> list[Path]:
    """Delete temporaries of ``target`` not modified for ``max_age`` seconds; returns those deleted."""
    pattern = _temporary_pattern(target)
    now = time.time()
    removed: list[Path] = []
    try:
        entries = os.scandir(target.parent)
    except OSError:  # a folder one may write to but not list: cleaning up is best effort
        return removed
    with entries:
        for entry in entries:
            if not pattern.fullmatch(entry.name) or not entry.is_file(follow_symlinks=False):
                continue
            try:
                # A save in progress keeps writing, so its temporary stays young.
                if now - entry.stat(follow_symlinks=False).st_mtime > max_age:
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
            except OSError:  # removed meanwhile by another save, or not ours to remove
                continue
    return removed
