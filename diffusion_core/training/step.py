"""One optimisation step of the training recipe every framework shares, so the distributed
loop (flows/distributed/train_ray.py) and in-process experiments (benchmarks/) cannot drift apart."""
from __future__ import annotations

from typing import NamedTuple

import torch

from diffusion_core.training.ema import EMA
from diffusion_core.training.precision import Precision

TAKEN, NONFINITE, OVERFLOW = "taken", "nonfinite", "overflow"


def adam(parameters, lr: float) -> torch.optim.Adam:
    """The recipe's optimiser: Adam (Kingma & Ba, 2015) with its fused kernel, one pass over all
    parameters per step instead of a dozen small ops per tensor, so fewer kernel launches and
    interpreter round trips per step (measured in docs/performance.md); the update is Adam's to
    rounding."""
    return torch.optim.Adam(parameters, lr=lr, fused=True)


class StepResult(NamedTuple):
    """The step's detached mean loss, its gradient norm (before clipping) and what happened:
    TAKEN; NONFINITE (the loss or the gradient is not a finite number: the step is not taken);
    OVERFLOW (fp16 only: the loss is finite but its scaled gradient overflowed, so the loss
    scale was lowered and the step not taken, as mixed-precision training expects now and then)."""

    loss: torch.Tensor
    grad_norm: torch.Tensor
    status: str


def training_step(model, denoiser, optimizer: torch.optim.Optimizer, ema: EMA, x: torch.Tensor,
                  generator: torch.Generator, lr: float, grad_clip: float | None,
                  precision: Precision | None = None) -> StepResult:
    """Set the learning rate, take the framework's loss on the batch x (under `precision`'s
    autocast), clip the gradient norm to grad_clip (None: no clipping, as NCSN's recipe), step
    the optimiser and update the EMA of model's own network.

    `denoiser` is the one the gradient flows through: model.denoiser, or a wrap of its
    network in DistributedDataParallel. A step that is not TAKEN changes no weight and no EMA,
    so the weights stay those of the last good step.
    """
    precision = precision or Precision()
    for group in optimizer.param_groups:
        group["lr"] = lr
    with precision.autocast():
        loss = model.loss(x, generator, denoiser=denoiser).float().mean()
    optimizer.zero_grad(set_to_none=True)
    precision.scaler.scale(loss).backward()
    precision.scaler.unscale_(optimizer)
    grad_norm = clip_grad_norm(list(denoiser.net.parameters()), grad_clip)
    status = _status(loss, grad_norm, precision)
    if status == TAKEN:
        precision.scaler.step(optimizer)
        ema.update(model.denoiser.net)
    else:
        optimizer.zero_grad(set_to_none=True)
    precision.scaler.update()  # fp16: lower the scale after an overflow, grow it after good steps
    return StepResult(loss.detach(), grad_norm, status)


def clip_grad_norm(parameters: list[torch.Tensor], max_norm: float | None) -> torch.Tensor:
    """Scale the gradients so that their global L2 norm is at most max_norm (Pascanu et al., 2013;
    None: measure only); returns the norm before clipping. The result of torch.nn.utils.clip_grad_norm_ to the bit,
    for a network on one device, without its move of each per-tensor norm to the first device
    in a call of its own (a hundred calls per step for the digits U-Net)."""
    grads = [p.grad for p in parameters if p.grad is not None]
    if not grads:
        return torch.tensor(0.0)
    total_norm = torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads)))
    if max_norm is not None:
        torch.nn.utils.clip_grads_with_norm_(parameters, max_norm, total_norm, foreach=True)
    return total_norm


def _status(loss: torch.Tensor, grad_norm: torch.Tensor, precision: Precision) -> str:
    if is_finite(loss, grad_norm):
        return TAKEN
    if precision.scaler.is_enabled() and is_finite(loss, loss):
        return OVERFLOW
    return NONFINITE


def is_finite(loss: torch.Tensor, grad_norm: torch.Tensor) -> bool:
    """Whether a step's loss and gradient norm are finite numbers."""
    return bool(torch.isfinite(loss).all()) and bool(torch.isfinite(grad_norm).all())
