"""The negative log-likelihood of held-out data under a trained model, for the evaluate stage.

Any framework's model is a process plus a denoiser, so its probability-flow ODE gives log p(x)
exactly (up to the ODE solver and, in high dimension, Hutchinson's estimate of the divergence):
nats per point for vector data, bits per dimension for images. Images are quantized, so they are
uniformly dequantized first, each value spread over its own bin: digits are 17-level data
(sklearn's 0..16 scaled to [-1, 1], bins of width 1/8), 8-bit images 256-level (width 1/127.5).
The figure is then an upper bound on the discrete data's -log2 P(y) / D (see
`diffusion_core.likelihood.pf_ode.bits_per_dim`). For models with a vp process, DDPM's variational bound
of the same model is reported beside it, term by term (discretized decoder for images).
Settings: params.sde.likelihood.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from diffusion_core.data import toys
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.likelihood.pf_ode import (
    bits_per_dim,
    dequantize,
    log_likelihood,
)
from diffusion_core.likelihood.vlb import variational_bound
from diffusion_core.models.denoiser import score_of_time
from diffusion_core.processes.sde import VPSDE
from flows.config.params import Params

ENTROPY_SAMPLES = 400_000


def quantization_levels(source: str) -> int:
    """Values per dimension of an image source: 17 for sklearn's digits, 256 for 8-bit images."""
    return 17 if source == "digits" else 256


def toy_entropy(name: str, n: int = ENTROPY_SAMPLES, seed: int = 0) -> float | None:
    """The data's differential entropy -E[log p(x)] in nats from its analytic density (Monte
    Carlo over n draws); None for toys without a closed-form density."""
    if name not in ("gmm8", "checkerboard"):
        return None
    x = toys.sample_toy(name, n, np.random.default_rng(seed))
    return float(-toys.toy_log_density(name, x).mean())


def _points(test: np.ndarray, n: int, seed: int) -> torch.Tensor:
    order = np.random.default_rng(seed).permutation(len(test))[:n]
    return torch.from_numpy(np.ascontiguousarray(test[order])).float()


def _prepare(x: torch.Tensor, levels: int | None, generator) -> torch.Tensor:
    if levels is None:
        return x
    try:
        return dequantize(x, levels, generator)
    except ValueError as err:
        raise ValueError(f"bits/dim: {err}; set image.nll_points: 0 to skip the NLL "
                         f"of data that is not {levels}-level") from err


def _vlb_metrics(model: DiffusionModel, x: torch.Tensor, levels, settings, unit) -> dict:
    bound = variational_bound(model.denoiser, model.chain, x, levels, settings.vlb_variance,
                              torch.Generator().manual_seed(settings.seed + 1))
    parts = {"vlb_prior": bound.prior, "vlb_denoising": bound.denoising,
             "vlb_reconstruction": bound.reconstruction, "vlb_total": bound.total}
    out = {k: float(unit(v).mean()) for k, v in parts.items()}
    out.update(vlb_nfe=bound.nfe, vlb_variance=settings.vlb_variance)
    return out


def _nats_per_unit(x: torch.Tensor, vector: bool) -> float:
    """1 for vectors (nats per point); d ln 2 for images (nats per point -> bits per dim)."""
    return 1.0 if vector else x[0].numel() * np.log(2)


def _pf_metrics(model: DiffusionModel, x: torch.Tensor, vector: bool, levels, settings,
                generator) -> dict:
    """log p through the model's PF-ODE: nats per point (vectors) or bits/dim (images)."""
    method = settings.method if settings.method != "auto" else ("exact" if vector else "hutchinson")
    result = log_likelihood(score_of_time(model.denoiser, model.process), model.process, x, method,
                            settings.probe, settings.probes, generator, settings.rtol,
                            settings.atol, settings.eps)
    scale = _nats_per_unit(x, vector)
    nll = -result.logp if vector else bits_per_dim(result.logp, x[0].numel(), levels)
    out = {"nll": float(nll.mean()), "nll_unit": "nats" if vector else "bits/dim",
           "nll_sem": float(nll.std() / np.sqrt(len(x))),  # the sampling error over points
           "nll_nfe": result.nfe, "nll_method": method, "nll_points": len(x),
           "nll_t_eps": settings.eps}
    if method == "hutchinson" and settings.probes > 1:  # of the mean over points
        out["nll_stderr"] = float(result.stderr.pow(2).sum().sqrt() / len(x) / scale)
    if not vector:
        out["nll_dequantization"] = f"uniform within each of {levels} levels' bins"
    return out


def nll_metrics(params: Params, framework: str, test: np.ndarray) -> dict:
    """NLL of `<vector|image>.nll_points` held-out examples under the framework's trained
    model, with how it was computed, and DDPM's bound beside it for vp models; {} when
    nll_points is 0."""
    settings, vector = params.sde.likelihood, test.ndim == 2
    n = min(params.profile("vector" if vector else "image").nll_points, len(test))
    if n == 0:
        return {}
    model = DiffusionModel.load(Path(params.train.out_dir) / framework)
    model.denoiser.eval()
    levels = None if vector else quantization_levels(params.data.source)
    generator = torch.Generator().manual_seed(settings.seed)
    x0 = _points(test, n, settings.seed)
    out = _pf_metrics(model, _prepare(x0, levels, generator), vector, levels, settings, generator)
    toy = params.data.source.split(":", 1)[1] if params.data.source.startswith("toy:") else None
    entropy = toy_entropy(toy) if toy else None
    if entropy is not None:
        out.update(data_entropy=entropy, nll_minus_entropy=out["nll"] - entropy)
    if settings.vlb and isinstance(model.process, VPSDE):
        scale = _nats_per_unit(x0, vector)
        out.update(_vlb_metrics(model, x0, levels, settings, lambda nats: nats / scale))
    return out
