"""What each stage cost, recorded by the stage itself: its wall time and the peak resident
memory on the driver's node (the driver, its child processes and Ray's worker processes,
sampled every SAMPLE_S, listed every LIST_S), so that a slow or memory-hungry stage shows in the compare report and
MLflow without a profiler.

Each stage writes `costs/<stage>[-<run>].json` when it ends; the folder is no stage's output
(DVC leaves it alone), and a stage run again replaces its own record.
"""
from __future__ import annotations

import functools
import json
import threading
import time
from pathlib import Path

import psutil

from diffusion_core.data.atomic import write_json

COSTS_DIR = Path("costs")
SAMPLE_S = 0.5  # how often the resident memory of the node's processes is read
LIST_S = 5.0  # how often they are listed again: a listing reads every process's /proc entry,
# which at SAMPLE_S's rate takes CPU that training lacks on a small machine (docs/performance.md)


def _node_processes() -> list[psutil.Process]:
    """This process, its descendants and Ray's worker processes on this node (named ray::...,
    whoever started them)."""
    me = psutil.Process()
    processes = {me.pid: me, **{p.pid: p for p in me.children(recursive=True)}}
    for process in psutil.process_iter(["name"]):
        if (process.info["name"] or "").startswith("ray::"):
            processes.setdefault(process.pid, process)
    return list(processes.values())


def _rss(processes: list[psutil.Process]) -> int:
    """Their resident bytes in all."""
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue  # ended since it was listed
    return total


class PeakMemory:
    """A context that samples the resident memory of `_node_processes` in a thread, listing them
    again every `list_every_s` (a process that starts and ends between two listings is not seen);
    `.peak` is the largest sample in bytes."""

    def __init__(self, every_s: float = SAMPLE_S, list_every_s: float = LIST_S):
        self.every_s, self.list_every_s, self.peak, self._stop = every_s, list_every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._sample, name="peak-memory", daemon=True)

    def _sample(self) -> None:
        processes, listed = [], -float("inf")
        while True:
            if time.monotonic() - listed >= self.list_every_s:
                processes, listed = _node_processes(), time.monotonic()
            self.peak = max(self.peak, _rss(processes))
            if self._stop.wait(self.every_s):
                return

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss(_node_processes()))


def cost_path(stage: str, run: str | None = None) -> Path:
    return COSTS_DIR / (f"{stage}-{run}.json" if run else f"{stage}.json")


def measured(stage: str):
    """Decorate a stage function `f(params)` or `f(params, run)` so that a call which returns
    writes its cost record (a call that raises leaves the last record as it was)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(params, *args):
            started, start = time.time(), time.perf_counter()
            with PeakMemory() as memory:
                result = fn(params, *args)
            run = args[0] if args else None
            write_json(cost_path(stage, run), {
                "stage": stage, "run": run, "seconds": time.perf_counter() - start,
                "peak_rss_mb": memory.peak / 2**20, "started": started})
            return result
        return wrapper
    return decorate


def read_costs(runs: list[str]) -> list[dict]:
    """The records of the data stages and of every stage of `runs`, in pipeline order."""
    order = ["prepare", "train-classifier"] + [f"{stage}-{run}" for run in runs
                                              for stage in ("train", "sample", "evaluate", "register")]
    records = []
    for name in order:
        path = COSTS_DIR / f"{name}.json"
        if path.is_file():
            try:
                records.append(json.loads(path.read_text()))
            except ValueError:
                continue  # a record is informative only: an unreadable one is skipped
    return records
