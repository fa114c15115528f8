"""A pool of Ray actors, each built once (a model loaded once), mapped over a list of calls.

Used by the distributed sample stage and the per-shard feature statistics of evaluation.
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Callable

from flows.distributed.ray_cluster import connect, require_resources


def map_actors(actor_cls: type, init_args: tuple, calls: list[tuple], num_workers: int,
               cpus_per_worker: float, on_result: Callable[[object], None],
               resources_timeout_s: float = 60.0, gpus_per_worker: float = 0.0) -> dict:
    """Start min(num_workers, len(calls)) actors ``actor_cls(*init_args)`` of
    ``cpus_per_worker`` CPUs (and ``gpus_per_worker`` GPUs) each, run ``actor.run(*call)`` for every call (a free actor takes
    the next one) and hand each result to ``on_result`` as it arrives; the actors are ended
    afterwards, also on failure. Returns the seconds spent starting the actors (Ray, process
    start, ``__init__``) and running the calls."""
    if not calls:
        return {"startup_seconds": 0.0, "run_seconds": 0.0}
    start = time.perf_counter()
    connect()
    import ray
    from ray.util import ActorPool

    workers = min(int(num_workers), len(calls))
    require_resources(SimpleNamespace(num_workers=workers, cpus_per_worker=cpus_per_worker,
                                      use_gpu=gpus_per_worker > 0, resources_timeout_s=resources_timeout_s))
    remote_cls = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(actor_cls)
    actors = [remote_cls.remote(*init_args) for _ in range(workers)]
    try:
        ray.get([actor.__ray_ready__.remote() for actor in actors])
        ready = time.perf_counter()
        for result in ActorPool(actors).map_unordered(lambda a, call: a.run.remote(*call), calls):
            on_result(result)
    except ray.exceptions.ActorDiedError as err:  # the actor's constructor raised
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise RuntimeError(f"a {actor_cls.__name__} actor failed to start: {lines[-1]}") from err
    finally:
        for actor in actors:
            ray.kill(actor)
    return {"startup_seconds": ready - start, "run_seconds": time.perf_counter() - ready}


def actor_device():
    """The device an actor computes on: the GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES to the
    actor's GPUs, and to none for an actor that asked for none), else the CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def progress_printer(label: str, total: int, unit: str = "samples") -> Callable[[int], None]:
    """A callback counting finished units, printing one line per call with rate and ETA."""
    state = SimpleNamespace(done=0, start=time.perf_counter())

    def advance(count: int) -> None:
        state.done += count
        elapsed = max(time.perf_counter() - state.start, 1e-9)
        rate = state.done / elapsed
        eta = (total - state.done) / rate if rate > 0 else float("inf")
        print(f"{label}: {state.done}/{total} {unit} ({100 * state.done / total:.0f}%), "
              f"{rate:.1f} {unit}/s, eta {eta:.0f} s", flush=True)

    return advance


def chunk_ranges(total: int, size: int) -> list[tuple[int, int]]:
    """[(first, stop), ...] covering range(total) in consecutive chunks of ``size``."""
    if int(total) < 1 or int(size) < 1:
        raise ValueError(f"need total >= 1 and size >= 1, got total={total}, size={size}")
    return [(first, min(first + size, total)) for first in range(0, total, size)]
