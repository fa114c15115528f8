"""One way to write an output: under a temporary name in the same folder, fsync, rename.

A reader, or a crash at any moment, sees either the old output or the new one, never a mix
or half a file. A file is written under a hidden name beside its destination, flushed to disk
and renamed over it (`os.replace` is atomic within one file system). A folder is built beside
its destination and swapped in: on Linux by one `renameat2(RENAME_EXCHANGE)`, elsewhere by
two renames, with the old folder put back if the second fails.

Temporary names carry the writing process and a random tag, so two runs writing beside each
other never share one; what a crashed writer left is removed by the next write to the same
destination (its process is gone), never what a live one is writing.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import glob
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

__all__ = ["temporary_name", "remove_stale_temporaries", "pid_alive", "atomic_path", "write_text", "write_json", "save_npz",
           "replacing_folder", "swap_in_folder"]


def temporary_name(path: Path, purpose: str = "tmp") -> Path:
    """A hidden name beside `path`, unique to this process and call."""
    path = Path(path)
    return path.with_name(f".{path.name}.{purpose}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid runs on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(path: Path) -> list[Path]:
    """Remove the temporaries beside `path` that a crashed writer left: hidden names made by
    `temporary_name` for `path` whose process is gone. A live writer's are kept."""
    path, removed = Path(path), []
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.[a-z]+-(\d+)-[0-9a-f]{{8}}$")
    for entry in path.parent.glob(f".{glob.escape(path.name)}.*-*"):
        match = pattern.match(entry.name)
        if match and not pid_alive(int(match.group(1))):
            _remove(entry)
            removed.append(entry)
    return removed


def _fsync(path: Path) -> None:
    """Flush a file, or a folder's entries, to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextlib.contextmanager
def atomic_path(path) -> Iterator[Path]:
    """Yield a temporary path beside `path` to write a file to; when the block ends normally,
    fsync it and rename it into place. On an error it is removed and `path` keeps its old
    content (or stays absent)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_name(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        if tmp.exists():
            _remove(tmp)


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path, value) -> Path:
    return write_text(path, json.dumps(value, indent=2))


def save_npz(path, **arrays) -> Path:
    """np.savez to `path` atomically (np.savez would append .npz to a name without it)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    return Path(path)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step with Linux's renameat2; False where it is not available."""
    libc_name = ctypes.util.find_library("c")
    if not libc_name:
        return False
    libc = ctypes.CDLL(libc_name, use_errno=True)
    if not hasattr(libc, "renameat2"):
        return False
    done = libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    return done == 0


def swap_in_folder(new: Path, path: Path) -> None:
    """Put the finished folder `new` at `path`, then remove the folder that was there."""
    new, path = Path(new), Path(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} exists and is not a folder; refusing to replace it")
    if not path.exists():
        os.replace(new, path)
    elif _exchange(new, path):
        _remove(new)  # now the old folder
    else:
        old = temporary_name(path, "old")
        os.replace(path, old)
        try:
            os.replace(new, path)
        except OSError:
            os.replace(old, path)  # put the previous output back
            raise
        _remove(old)
    _fsync(path.parent)


@contextlib.contextmanager
def replacing_folder(path) -> Iterator[Path]:
    """Yield an empty staging folder beside `path`; when the block ends normally, its files are
    flushed and it is swapped in for `path`. On an error the staging folder is removed and
    `path` is left as it was."""
    path = Path(path).absolute()
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    staging = temporary_name(path)
    staging.mkdir()
    try:
        yield staging
        for file in staging.rglob("*"):
            if file.is_file():
                _fsync(file)
        swap_in_folder(staging, path)
    finally:
        if staging.exists():
            _remove(staging)
