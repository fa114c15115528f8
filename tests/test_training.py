"""The shared optimisation step: learning rate, clipping, EMA, and that it learns."""
from __future__ import annotations

import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.ema import EMA
from diffusion_core.training.step import training_step

CONFIG = {"framework": "ddpm", "process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
          "parameterization": "edm", "sigma_data": 1.0, "data_shape": [2],
          "network": {"kind": "mlp", "dim": 2, "width": 64, "depth": 2, "emb_dim": 16},
          "loss": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "network"}}


def test_training_step_sets_the_lr_clips_and_updates_the_ema():
    torch.manual_seed(0)
    model = DiffusionModel(CONFIG)
    net = model.denoiser.net
    optimizer, ema = torch.optim.Adam(net.parameters(), lr=1.0), EMA(net, 7.0)
    x, generator = torch.randn(256, 2) * 0.3 + 1.0, torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in ema.model.parameters()]
    losses = [training_step(model, model.denoiser, optimizer, ema, x, generator, 3e-3, grad_clip=0.5)
              for _ in range(200)]
    assert optimizer.param_groups[0]["lr"] == 3e-3
    assert all(loss.grad_fn is None and status == "taken" for loss, _, status in losses)
    # the returned norm is the one before clipping; the gradients the step used are clipped
    assert max(float(norm) for _, norm, _ in losses) > 0.5
    _, norm, _ = training_step(model, model.denoiser, optimizer, ema, x * 10, generator, 3e-3, grad_clip=0.5)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert float(norm) > 0.5 and float(clipped) <= 0.5 + 1e-5
    first, last = (torch.stack([loss for loss, _, _ in part]).mean() for part in (losses[:20], losses[-20:]))
    assert last < 0.8 * first
    assert any(not torch.equal(b, p) for b, p in zip(before, ema.model.parameters()))
