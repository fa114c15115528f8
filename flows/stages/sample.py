"""The sample stage: the profile's number of samples drawn on Ray actors, written as shards,
an .npz and a picture."""
from __future__ import annotations

import time
from pathlib import Path

from diffusion_core.data import shards
from diffusion_core.data.atomic import save_npz, write_json
from flows.config.params import Params
from flows.distributed.sample_ray import draw_stage
from flows.stages import plots
from flows.stages.data import dataset_meta
from flows.tracking import runs as tracking
from flows.tracking.costs import measured
from flows.tracking.run_status import stage_run


@measured("sample")
def sample(params: Params, framework: str) -> dict:
    """Draw the profile's number of samples on Ray actors (flows.distributed.sample_ray: one seed per
    sample, resumable parts) and write shards, an .npz and a picture."""

    meta = dataset_meta(params)
    out = Path(params.sample.out_dir) / framework
    run_id = tracking.load_run_id(Path(params.train.out_dir) / framework)
    with stage_run(run_id):  # RUNNING while it draws, ended again (KILLED if stopped)
        info = _draw_and_write(params, framework, meta, out)
        tracking.log_metrics(run_id, {"sample_nfe": info["nfe"], "sample_seconds": info["seconds"]})
        tracking.log_artifacts(run_id, out / "samples.png", "samples")
    return info


def _draw_and_write(params: Params, framework: str, meta: dict, out: Path) -> dict:
    """Draw the samples (resuming finished parts); write shards, .npz, picture and sampling.json."""
    start = time.time()
    x, nfe, drawing = draw_stage(params, framework, meta, out / "parts")
    shards.write_shards(out / "shards", {"samples": (x, None)}, params.sample.samples_per_shard,
                        {"framework": framework, "seed": params.sample.seed})
    save_npz(out / "samples.npz", x=x)
    real, _ = shards.load_split(params.data.out_dir, "test")
    sampler = params.framework(framework).sampler
    plots.save_picture(x, real, out / "samples.png", f"{framework}: {sampler['name']}, NFE {nfe}")
    info = {"num_samples": len(x), "sampler": sampler["name"], "sampler_settings": sampler,
            "nfe": nfe, "seed": params.sample.seed, "seconds": time.time() - start,
            "workers": drawing["workers"], "drawn": drawing["drawn"], "reused": drawing["reused"],
            "samples_per_s": drawing["samples_per_s"]}
    write_json(out / "sampling.json", info)
    return info
