"""Waiting on events, not on the clock: the service tests poll for the thing itself (a file, a
log line, a server's answer, a record Ray wrote) until a generous deadline, and fail naming it."""
from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path


def wait_for(condition: Callable, what: str, timeout_s: float = 120, poll_s: float = 0.2,
             alive=None, detail: Callable[[], str] | None = None):
    """condition()'s first truthy value. Fails naming `what` after timeout_s, or as soon as
    `alive` (a Popen or a Thread that should bring it about) has ended without it; detail()
    (a log's tail, say) is added to the message."""
    deadline = time.monotonic() + timeout_s
    while True:
        ended = alive is not None and (alive.poll() is not None if hasattr(alive, "poll")
                                       else not alive.is_alive())
        value = condition()  # after `ended`: what a process did before ending counts
        if value:
            return value
        if ended or time.monotonic() > deadline:
            why = "the process ended" if ended else f"none within {timeout_s:.0f} s"
            raise AssertionError(f"waiting for {what}: {why}" + (f"\n{detail()}" if detail else ""))
        time.sleep(poll_s)


def registered_checkpoint_steps(storage: Path) -> dict[str, int]:
    """{run folder: the step of its latest checkpoint Ray Train's controller has registered},
    read from the record it writes into each run's storage folder after registering one
    (checkpoint_manager_snapshot.json): what a restarted worker group resumes from. A run
    before its first is absent. (A checkpoint_* folder on disk is not enough: it exists before
    it is registered.)"""
    steps = {}
    for snapshot in Path(storage).glob("*/checkpoint_manager_snapshot.json"):
        try:
            latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
        except (OSError, ValueError):  # being written
            continue
        if latest:
            steps[snapshot.parent.name] = int(latest["metrics"]["step"])
    return steps


def registered_checkpoint_step(storage: Path) -> int | None:
    """The registered checkpoint's step of a storage folder's (first) run, or None before it."""
    return next(iter(registered_checkpoint_steps(storage).values()), None)


def log_tail(path: Path, chars: int = 3000) -> Callable[[], str]:
    """A detail() for wait_for: the end of a log file, if it exists yet."""
    return lambda: Path(path).read_text(errors="replace")[-chars:] if Path(path).exists() else ""
