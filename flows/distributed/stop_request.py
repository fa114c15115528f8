"""Collectives and the stop request of a training run.

Every rank must take the same decision at the same step, so flags pass through a collective
(`from_rank_zero`, `on_every_rank`). The driver asks a run to stop by writing a file in the run's
folder of Ray's storage, which every worker reaches (a local path or a URI, as Ray Train's
checkpoints need anyway); SIGTERM and SIGINT at the driver write it, and the workers checkpoint
at the next step boundary and end.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time

import torch
import torch.distributed as dist

STOP_FILE = "stop-requested"  # in the run's storage folder: the driver asks the workers to stop
STOP_POLL_S = 1.0  # how often rank 0 looks for the stop file


class TrainingInterrupted(RuntimeError):
    """SIGTERM or SIGINT stopped the run before its last step; the same call again resumes it."""

# -- collectives: every rank takes the same decision -------------------------------------------

def distributed() -> bool:
    """Whether there are other ranks to agree with: a one-worker group (Ray Train makes a process
    group for it too) skips the collectives, a fixed cost on every step that weighs most on a
    small model (docs/performance.md)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def from_rank_zero(flag: bool) -> bool:
    """Rank 0's `flag` on every rank, so all ranks stop at the same step."""
    value = torch.tensor([float(flag)])
    if distributed():
        dist.broadcast(value, src=0)
    return bool(value.item())


def on_every_rank(flag: bool) -> bool:
    """True only if `flag` holds on every rank, so all ranks take the same decision."""
    value = torch.tensor([float(flag)])
    if distributed():
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return bool(value.item())


def gather(tensor: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's `tensor` (same shape and dtype on all), in rank order."""
    if not distributed():
        return [tensor]
    gathered = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, tensor)
    return gathered

# -- the stop request: a file in the run's storage folder ------------------------------------

def stop_uri(storage: str, run_name: str) -> str:
    """Where the driver asks run `run_name` to stop: a file in its folder of Ray's storage
    (a local path or a URI every worker reaches, as Ray Train's checkpoints need anyway)."""
    return f"{storage.rstrip('/')}/{run_name}/{STOP_FILE}"


def _filesystem(uri: str):
    """The pyarrow file system and path of a local path or a URI, as Ray Train's storage uses."""
    import pyarrow.fs

    return pyarrow.fs.FileSystem.from_uri(uri)


def request_stop(uri: str) -> None:
    """Ask the run to stop at its next step boundary (what SIGTERM and SIGINT do at the driver)."""
    fs, path = _filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(f"stop asked at {time.time():.3f} by pid {os.getpid()}\n".encode())


def stop_requested(uri: str) -> bool:
    """Whether a stop request is there."""
    import pyarrow.fs

    fs, path = _filesystem(uri)
    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound


def clear_stop(uri: str) -> None:
    """Remove a stop request, so that one asked of an earlier call does not end this one."""
    if stop_requested(uri):
        fs, path = _filesystem(uri)
        fs.delete_file(path)


class StopRequest:
    """Whether the driver asked to stop: rank 0 looks for the stop file at most every
    STOP_POLL_S (a file system call per step would slow small models), every rank hears its
    answer at every step, so all stop at the same step boundary."""

    def __init__(self, uri: str, rank: int):
        self.uri, self.rank, self.looked, self.seen = uri, rank, -math.inf, False

    def __call__(self) -> bool:
        if self.rank == 0 and not self.seen and time.monotonic() - self.looked >= STOP_POLL_S:
            self.seen, self.looked = stop_requested(self.uri), time.monotonic()
        return from_rank_zero(self.seen)

# -- signals at the driver -------------------------------------------------------------------

@contextlib.contextmanager
def signals_request_stop(stop: str, run_name: str):
    """While the block runs, SIGTERM or SIGINT asks the workers to checkpoint and end at the next
    step boundary (the stop file); a second signal stops at once, without a checkpoint. The
    handlers that were there before come back afterwards."""
    received = []

    def handler(signum, frame):
        name = signal.Signals(signum).name
        received.append(name)
        if len(received) > 1:
            raise TrainingInterrupted(f"{run_name}: {name} again: stopped at once, without a checkpoint; "
                                      f"run the same command again to resume from the last one")
        request_stop(stop)
        print(f"[{run_name}] {name}: stopping at the next step boundary with a checkpoint "
              f"(send it again to stop at once)", file=sys.stderr, flush=True)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


_received: list[str] = []  # the stop signals_interrupt took, for code that sees another exception
_training_off_main: set[str] = set()  # stop files of the runs training in other threads (side by side)


def stop_received() -> str | None:
    """The message of the stop signals_interrupt took in this block, or None. A signal raises
    in whatever the main thread runs, and C code (numpy, torch, pyarrow) may hand the exception
    back as a SystemError: callers read the stop here rather than from the exception's type."""
    return _received[-1] if _received else None


@contextlib.contextmanager
def signals_interrupt(what: str):
    """While the block runs in the main thread, SIGTERM or SIGINT raises TrainingInterrupted at
    once, so a stage outside training's loop (sampling, evaluation, registering) ends its MLflow
    run KILLED and a flow Cancelled, not killed mid-write (sampling keeps its finished parts: the
    same command resumes). Training's own handler (checkpoint first) takes over inside it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        _received.append(f"{what}: {signal.Signals(signum).name}: stopped; run the same command again to resume")
        for stop in list(_training_off_main):  # runs side by side: each checkpoints and ends
            request_stop(stop)
        raise TrainingInterrupted(_received[-1])

    _received.clear()
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old if old is not None else signal.SIG_DFL)


def fit_watching_signals(trainer, stop: str, run_name: str):
    """trainer.fit(), with SIGTERM and SIGINT asking for a checkpointed stop. fit() runs in a
    helper thread so that the main thread catches the signals (Ray Train's fit() in the main
    thread takes SIGINT to abort the run without a checkpoint). Off the main thread (a Prefect
    task's run side by side with others), where no handler can be installed, fit() runs as it
    is and signals_interrupt's handler in the main thread writes its stop file."""
    if threading.current_thread() is not threading.main_thread():
        _training_off_main.add(stop)
        if stop_received():  # the signal came as this run started
            request_stop(stop)
        try:
            return trainer.fit()
        finally:
            _training_off_main.discard(stop)
    outcome = {}

    def run():
        try:
            outcome["result"] = trainer.fit()
        except BaseException as err:  # noqa: BLE001 -- raised again in the main thread below
            outcome["error"] = err

    thread = threading.Thread(target=run, name=f"fit-{run_name}", daemon=True)
    with signals_request_stop(stop, run_name):
        thread.start()
        while thread.is_alive():
            thread.join(0.2)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]
