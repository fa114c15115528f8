"""One optimisation step of the training recipe every framework shares, so the distributed
loop (flows/train_ray.py) and in-process experiments (benchmarks/) cannot drift apart."""
from __future__ import annotations

import torch

from diffusion_core.training.ema import EMA


def training_step(model, denoiser, optimizer: torch.optim.Optimizer, ema: EMA, x: torch.Tensor,
                  generator: torch.Generator, lr: float, grad_clip: float):
    """Set the learning rate, take the framework's loss on the batch x, clip the gradient norm
    to grad_clip, step the optimiser and update the EMA of model's own network.

    `denoiser` is the one the gradient flows through: model.denoiser, or a wrap of its
    network in DistributedDataParallel. Returns the (detached) mean loss and the gradient norm.
    A step whose loss or gradient is not finite is not taken (no optimizer step, no EMA update),
    so the weights stay those of the last good step; the caller sees it in what is returned.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    loss = model.loss(x, generator, denoiser=denoiser).mean()
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(denoiser.net.parameters(), grad_clip)
    if not is_finite(loss, grad_norm):
        optimizer.zero_grad(set_to_none=True)
        return loss.detach(), grad_norm
    optimizer.step()
    ema.update(model.denoiser.net)
    return loss.detach(), grad_norm


def is_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether a step's loss and gradient norm are finite numbers."""
    return bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad_norm).all())
