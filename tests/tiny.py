"""A tiny configuration of the whole pipeline for tests: a few hundred steps on small data."""
from __future__ import annotations

import contextlib
import copy
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# the sde section of the shared tiny pipeline: PC sampling (30 predictor + 30 corrector steps)
TINY_SDE = {"sampler": {"name": "pc", "steps": 30}, "likelihood": {"rtol": 1e-4, "atol": 1e-4}}


def tiny_params(source: str = "toy:checkerboard", **sections) -> dict:
    """params.yaml's content shrunk to seconds of work; `sections` override whole keys."""
    data = yaml.safe_load((ROOT / "params.yaml").read_text())
    data["data"].update(source=source, toy_train_size=2000, toy_val_size=500, toy_test_size=500,
                        samples_per_shard=250)
    # a previous test's Ray actors may take a while to release their CPUs on a busy machine
    data["ray"].update(num_workers=2, cpus_per_worker=1, resources_timeout_s=60)
    data["classifier"].update(epochs=3)
    data["train"].update(frameworks=["ddpm"], log_every=20, checkpoint_every=40, time_limit_s=120)
    # a plain `ddpm` run with EDM's preconditioning and noise levels: what a few dozen steps
    # learn best (the repo's section as written is the paper's eps-prediction)
    data["ddpm"].update(parameterization="edm", noise="lognormal",
                        sampler={"name": "ddim", "steps": 9, "spacing": "karras"})
    data["vector"].update(steps=60, batch_size=128, num_samples=500,
                          network={"width": 64, "depth": 2, "emb_dim": 32})
    data["image"].update(steps=20, batch_size=32, num_samples=64,
                         network={"base": 16, "mults": [1, 2], "blocks": 1,
                                  "emb_dim": 32})
    data["sample"].update(batch_size=256, samples_per_shard=250)
    data["sde"]["likelihood"].update(rtol=1e-4, atol=1e-4)  # evaluate's NLL, of 64 points
    data["vector"]["nll_points"] = data["image"]["nll_points"] = 64
    data["evaluate"].update(nfe_sweep=[{"name": "ddim", "spacing": "karras", "steps": [3, 9]}],
                            nfe_sweep_samples=200, max_pairwise=500)
    for key, value in sections.items():
        data[key] = {**data[key], **value}
    return copy.deepcopy(data)


def write_params(directory: Path, data: dict) -> Path:
    path = Path(directory) / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


@contextlib.contextmanager
def in_workspace(root: Path):
    """Work in `root` as the stages do in a checkout: its own sqlite MLflow store, a local Ray
    instance (no service addresses from the environment); cwd and environment restored after."""
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        patch.delenv("MLFLOW_TRACKING_URI", raising=False)
        patch.delenv("RAY_ADDRESS", raising=False)
        yield patch


def fd_record(ratio: float, se: float = 0.05, seed: int = 0, floor: float = 2.0, replicates: int = 200,
              name: str = "fd") -> dict:
    """A metrics record with the headline evaluate writes: FD/floor (``name`` "fd", images) or
    SWD/floor ("swd", vectors) with its interval and (figure, floor) replicates whose floor
    draws are those of every record made here (as for runs measured alike), the figure's
    spread giving the ratio about ``se``."""
    import numpy as np

    from diffusion_core.evaluation.intervals import headline_record

    floors = floor + np.random.default_rng(0).normal(0, 0.01, replicates)
    figures = ratio * floor + np.random.default_rng(seed + 1).normal(0, se * floor, replicates)
    record = {name: ratio * floor, f"{name}_floor": floor,
              **headline_record(name, ratio * floor, floor, np.column_stack([figures, floors]), 0),
              "reference_split": "test", "num_reference": 500, "num_samples": 1000, "sampler": "ddim", "nfe": 9}
    if name == "fd":
        record.update(fd_at_n=ratio * floor, feature_extractor_sha256="ab" * 32)
    return record
