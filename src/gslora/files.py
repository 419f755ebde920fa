"""Atomic file writes (temporary file, fsync, rename): a crash never leaves a half-written file that looks complete."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _umask() -> int:
    """The process's umask: from /proc where there is one (reading it elsewhere means setting and restoring it)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` and rename the temporary file over ``path`` only once it succeeded. The file gets the
    mode a plain ``open`` would give it (0666 less the umask), not the temporary file's private 0600."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        os.chmod(tmp_path, 0o666 & ~_umask())
        with open(tmp_path, "rb") as f:  # the data reaches the disk before the rename makes it visible
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_dir(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Fill a temporary folder with ``write(tmp_dir)`` and rename it to ``path`` (replacing an old one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        write(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # a folder as mkdir makes it, not mkdtemp's private 0700
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_writable(path: str | os.PathLike, what: str = "output folder") -> None:
    """Raise a one-sentence GsloraError when ``path`` (a folder, existing or to be made) cannot be written; leaves
    nothing behind (a temporary folder is made in the nearest existing ancestor and removed)."""
    from .errors import GsloraError

    path = Path(path).absolute()
    if path.exists() and not path.is_dir():
        raise GsloraError(f"{what} {path} exists and is not a folder; choose another path.")
    probe = path
    while not probe.exists():
        probe = probe.parent
    try:
        if not probe.is_dir():
            raise NotADirectoryError(f"{probe} is a file")
        os.rmdir(tempfile.mkdtemp(dir=probe, prefix=".gslora-write-check."))
    except OSError as e:
        reason = e.strerror or str(e)
        raise GsloraError(f"cannot write the {what} {path} ({reason}); choose a folder you can write to.") from None
