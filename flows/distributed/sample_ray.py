"""Distributed sampling on Ray: actors that load the model once and draw seed ranges.

Sample i is drawn from its own seed (`PerSampleNoise`), and part k always holds samples
[k·S, min((k+1)·S, N)), drawn in the same batches whichever actor draws it; so 1 or many
workers give identical samples. Each part is written atomically as
``parts/part-{first:09d}-{stop:09d}.npz`` (x, seeds, nfe). A run interrupted halfway and run
again draws only the missing parts; ``parts/plan.json`` (model weights hash, sampler, seed,
sizes) makes a changed plan start afresh instead of mixing samples of two plans.
"""
from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from diffusion_core.data.atomic import save_npz, write_json
from diffusion_core.features.inception import weights_sha256
from diffusion_core.frameworks import DiffusionModel
from flows.distributed.actor_pool import actor_device, chunk_ranges, map_actors, progress_printer
from flows.tracking.sampler import draw_samples, sample_seeds

PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class SamplePlan:
    """How many samples, in parts of which size and batches, and what identifies the plan."""

    total: int
    per_part: int
    batch_size: int
    fingerprint: dict = field(default_factory=dict)  # JSON-able: model hash, sampler, seed, ...

    def ranges(self) -> list[tuple[int, int]]:
        return chunk_ranges(self.total, self.per_part)


def model_fingerprint(model_dir) -> str:
    """sha256 of the model's weights file: parts drawn from other weights are not reused."""
    path = Path(model_dir) / "weights.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: run the train stage first")
    return weights_sha256(path)


def part_path(parts_dir: Path, first: int, stop: int) -> Path:
    return Path(parts_dir) / f"part-{first:09d}-{stop:09d}.npz"


def read_part(path: Path, seeds: list[int]) -> tuple[np.ndarray, int]:
    """A finished part's samples and NFE; ValueError naming the file when it is empty,
    unreadable or holds other seeds than the plan gives it."""
    try:
        with np.load(path, allow_pickle=False) as z:
            x, stored, nfe = z["x"], z["seeds"], int(z["nfe"])
    except Exception as err:  # zipfile, KeyError, ValueError, EOFError for a damaged file
        raise ValueError(f"sample part {path} is corrupt or empty ({err}); delete it to draw it again") from err
    if len(x) != len(seeds) or not np.array_equal(stored, np.asarray(seeds, dtype=np.int64)):
        raise ValueError(f"sample part {path} holds {len(x)} samples of other seeds than the plan; "
                         "delete it to draw it again")
    return x, nfe


def _write_part(path: Path, x: np.ndarray, seeds: list[int], nfe: int) -> None:
    """Write to a temporary file, then rename: a part exists whole or not at all."""
    save_npz(path, x=x, seeds=np.asarray(seeds, dtype=np.int64), nfe=np.int64(nfe))


class PartWriter:
    """A Ray actor: loads the model once, then draws and writes whole parts."""

    def __init__(self, load_model: Callable, seeds_of: Callable, threads: int):
        import torch

        torch.set_num_threads(max(1, int(threads)))
        self.model, self.seeds_of = load_model(), seeds_of
        self.model.denoiser.net.to(actor_device())  # samplers stay on the CPU; the network moves

    def run(self, parts_dir: str, first: int, stop: int, batch_size: int, draw: Callable) -> dict:
        start, chunks, nfe = time.perf_counter(), [], 0
        for b in range(first, stop, batch_size):
            x, nfe = draw(self.model, self.seeds_of(b, min(batch_size, stop - b)))
            chunks.append(np.asarray(x, dtype=np.float32))
        _write_part(part_path(Path(parts_dir), first, stop), np.concatenate(chunks),
                    self.seeds_of(first, stop - first), nfe)
        return {"first": first, "stop": stop, "nfe": nfe, "seconds": time.perf_counter() - start}


def _prepare(parts_dir: Path, plan: SamplePlan) -> None:
    """Keep the parts of the same plan; anything else in the folder is removed."""
    wanted = asdict(plan)
    path = parts_dir / PLAN_FILE
    if path.is_file():
        try:
            same = json.loads(path.read_text()) == json.loads(json.dumps(wanted))
        except ValueError:
            same = False
        if same:  # a crashed writer's temporaries go when their parts are drawn again
            return
    if parts_dir.exists():
        shutil.rmtree(parts_dir)
    parts_dir.mkdir(parents=True)
    write_json(path, wanted)


def draw_parts(parts_dir, plan: SamplePlan, load_model: Callable, seeds_of: Callable,
               draw: Callable, num_workers: int = 2, cpus_per_worker: float = 1.0,
               label: str = "sample", gpus_per_worker: float = 0.0) -> dict:
    """Draw every part of ``plan`` not already in ``parts_dir`` on a pool of Ray actors.

    ``load_model()`` builds the model (once per actor), ``seeds_of(first, count)`` gives the
    seeds of samples first .. first+count-1, ``draw(model, seeds)`` returns (float32 samples,
    NFE). Returns counts and the wall time and throughput of the drawing.
    """
    return draw_many([(parts_dir, plan, draw)], load_model, seeds_of, num_workers,
                     cpus_per_worker, label, gpus_per_worker)


def draw_many(jobs: list[tuple], load_model: Callable, seeds_of: Callable, num_workers: int = 2,
              cpus_per_worker: float = 1.0, label: str = "sample", gpus_per_worker: float = 0.0) -> dict:
    """``draw_parts`` for several ``(parts_dir, plan, draw)`` jobs of one model on one pool
    (several samplers of a quality-against-NFE sweep, say)."""
    todo, total = [], 0
    for parts_dir, plan, draw in jobs:
        parts_dir = Path(parts_dir).absolute()
        _prepare(parts_dir, plan)
        total += plan.total
        for first, stop in plan.ranges():
            path = part_path(parts_dir, first, stop)
            if path.is_file():
                read_part(path, seeds_of(first, stop - first))
            else:
                todo.append((str(Path(parts_dir).absolute()), first, stop, plan.batch_size, draw))
    drawn = sum(call[2] - call[1] for call in todo)
    advance = progress_printer(label, drawn) if drawn else None
    threads = max(1, int(cpus_per_worker))
    times = map_actors(PartWriter, (load_model, seeds_of, threads), todo, num_workers,
                       cpus_per_worker, lambda r: advance(r["stop"] - r["first"]),
                       gpus_per_worker=gpus_per_worker)
    total_s = times["startup_seconds"] + times["run_seconds"]
    return {"drawn": drawn, "reused": total - drawn, "parts": sum(len(j[1].ranges()) for j in jobs),
            "workers": min(int(num_workers), len(todo)), **times,
            "samples_per_s": drawn / total_s if drawn else None,  # with start-up
            "samples_per_s_running": drawn / times["run_seconds"] if drawn else None}


def _draw_with_params(params, framework: str, kind: str, shape: tuple, model, seeds):
    return draw_samples(params, framework, model, seeds, kind, shape)


def stage_callables(params, framework: str, model_dir, kind: str, shape) -> dict:
    """``load_model``, ``seeds_of`` and ``draw`` for one framework of the pipeline: the
    stage's own seed scheme and sampler settings (picklable, for the actors)."""
    return {"load_model": functools.partial(DiffusionModel.load, Path(model_dir).absolute()),
            "seeds_of": functools.partial(sample_seeds, params),
            "draw": functools.partial(_draw_with_params, params, framework, kind, tuple(shape))}


def stage_plan(params, framework: str, meta: dict, total: int) -> SamplePlan:
    """The sample stage's plan: parts of sample.samples_per_shard, and a fingerprint of
    everything that fixes the samples (weights, sampler, seed, clip, batching)."""
    per_part = int(params.sample.samples_per_shard)
    model_dir = Path(params.train.out_dir) / framework
    fingerprint = {"model": model_fingerprint(model_dir), "framework": framework,
                   "sampler": params.framework(framework).sampler, "seed": params.sample.seed,
                   "clip": params.profile(meta["kind"]).clip, "shape": list(meta["shape"])}
    return SamplePlan(int(total), per_part, min(int(params.sample.batch_size), per_part), fingerprint)


def draw_stage(params, framework: str, meta: dict, parts_dir) -> tuple[np.ndarray, int, dict]:
    """The sample stage's drawing: every sample of the profile, on sample.num_workers actors;
    returns the samples in seed order, the NFE and the drawing's counts and timings."""
    callables = stage_callables(params, framework, Path(params.train.out_dir) / framework,
                                meta["kind"], meta["shape"])
    plan = stage_plan(params, framework, meta, params.profile(meta["kind"]).num_samples)
    info = draw_parts(parts_dir, plan, num_workers=params.sample.num_workers,
                      cpus_per_worker=params.sample.cpus_per_worker, label=f"sample {framework}",
                      gpus_per_worker=params.ray.gpus_per_actor,
                      **callables)
    x, nfe = collect(parts_dir, plan, callables["seeds_of"])
    return x, nfe, info


def collect(parts_dir, plan: SamplePlan, seeds_of: Callable) -> tuple[np.ndarray, int]:
    """All samples of ``plan`` in order (no gaps, no duplicates) and the NFE per sample
    (the parts' mean, rounded: adaptive samplers may differ between parts)."""
    chunks, nfes = [], []
    for first, stop in plan.ranges():
        path = part_path(Path(parts_dir), first, stop)
        if not path.is_file():
            raise ValueError(f"sample part {path} is missing: run the sample stage again")
        x, nfe = read_part(path, seeds_of(first, stop - first))
        chunks.append(x)
        nfes.append(nfe)
    return np.concatenate(chunks), int(round(float(np.mean(nfes))))
