"""One run at a time in a workspace: a lock file that names its holder.

Stages write under the working folder (data/, models/, samples/, metrics/, reports/). Two runs
on the same outputs would interleave their writes (one removing the other's sample parts, say),
so each entry point holds `.diffusion.lock` while it runs. The file is created exclusively and
holds the holder's pid, host, start time and command. A second run refuses with a message naming
the holder, or waits for it (`--wait SECONDS`). A lock whose process is gone (same host, no such
pid) is stale and taken over. The holder may take the lock again (the CLI's pipeline command
runs the Prefect flow, which takes it too).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from diffusion_core.data.atomic import pid_alive, temporary_name

LOCK_NAME = ".diffusion.lock"
_held: dict[Path, int] = {}  # lock path -> how many times this process holds it


class WorkspaceLocked(RuntimeError):
    """Another run holds the workspace."""


def _me() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join(sys.argv)}


def _create(path: Path, holder: dict) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as fh:
        json.dump(holder, fh)
    return True


def read_holder(path: Path) -> dict | None:
    """The lock's holder, or None when there is no lock (or it is being written)."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, ValueError):
        return None


def _stale(holder: dict) -> bool:
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder.get("pid", -1)))


def _take_over(path: Path) -> None:
    """Move a stale lock aside (a rename: of two runs taking it over, only one succeeds)."""
    with contextlib.suppress(FileNotFoundError):
        os.replace(path, temporary_name(path, "stale"))
        for old in path.parent.glob(f".{path.name}.stale-*"):
            old.unlink(missing_ok=True)


def _describe(path: Path, holder: dict) -> str:
    return (f"the workspace {path.parent.resolve()} is in use: {path.name} is held by pid "
            f"{holder.get('pid')} on {holder.get('host')} since {holder.get('started')} "
            f"({holder.get('command')!r}); wait for it (--wait SECONDS), or remove {path} if that "
            f"run is gone")


def acquire(path: Path, wait_s: float, poll_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while not _create(path, _me()):
        holder = read_holder(path)
        if holder is not None and _stale(holder):
            _take_over(path)
            continue
        grace = 0.0 if holder is not None else 1.0  # a lock being written is unreadable briefly
        if time.monotonic() >= deadline + grace:
            raise WorkspaceLocked(_describe(path, holder or {}))
        time.sleep(poll_s)


@contextlib.contextmanager
def workspace_lock(folder=".", wait_s: float = 0.0, poll_s: float = 0.2) -> Iterator[Path]:
    """Hold the workspace's lock for the block; re-entrant within one process."""
    path = (Path(folder) / LOCK_NAME).absolute()
    if _held.get(path, 0) == 0:
        acquire(path, wait_s, poll_s)
    _held[path] = _held.get(path, 0) + 1
    try:
        yield path
    finally:
        _held[path] -= 1
        if _held[path] == 0 and (read_holder(path) or {}).get("pid") == os.getpid():
            path.unlink(missing_ok=True)
