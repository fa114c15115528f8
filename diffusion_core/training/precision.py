"""How the training step computes: its float precision and the network's speed options.

`train.precision` picks the dtype the forward pass and the loss run in under autocast: fp32
(none), bf16 (same exponent range as fp32, so no loss scaling), or fp16 with a dynamic loss
scale (Micikevicius et al., 2018, "Mixed Precision Training": scale the loss so small gradients
survive fp16, halve the scale and skip the step when a gradient overflows, grow it again after a
run of good steps). Weights, Adam's moments and the EMA stay fp32 in every case.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast and the loss scaler of one precision on one kind of device ("cpu", "cuda")."""

    def __init__(self, name: str = "fp32", device_type: str = "cpu"):
        if name not in PRECISIONS:
            raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {name!r}")
        self.name, self.device_type, self.dtype = name, device_type, PRECISIONS[name]
        self.scaler = torch.amp.GradScaler(device_type, enabled=name == "fp16")

    def autocast(self):
        """The context the forward pass and the loss run in."""
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def state_dict(self) -> dict:
        """The loss scale and its growth counter (empty unless fp16), for a checkpoint."""
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state:
            self.scaler.load_state_dict(state)


def tune_network(net: nn.Module, channels_last: bool = False, compile: bool = False,
                 wrap: Callable[[nn.Module], nn.Module] = lambda net: net) -> nn.Module:
    """The network as the training step should call it: with its 4-D weights in channels-last
    memory order (faster convolutions: oneDNN's on CPUs, tensor cores on GPUs; inputs follow, see
    `as_channels_last`), then wrapped by `wrap` (DDP, say: it sizes its gradient buckets by the
    parameters' strides when it wraps, so the memory order comes first), then optionally compiled
    by torch.compile. The result shares its parameters with `net`, so saving `net` saves what
    was trained."""
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    net = wrap(net)
    return torch.compile(net) if compile else net


def as_channels_last(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A batch of images in channels-last order when asked (vectors are left as they are)."""
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x
