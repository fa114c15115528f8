"""Moving averages of network weights: EDM2's power-function EMA and the classic exponential one."""
from __future__ import annotations

import copy

import torch
from torch import nn

EMA_KINDS = ("power", "exponential")


class EMA:
    """Power-function EMA (Karras et al., 2024, "Analyzing and Improving the Training Dynamics of
    Diffusion Models", eq. 3): at step t the decay is (1 - 1/t)^(gamma + 1), so the average
    always covers a fixed fraction of training, whatever its length. gamma ~ 7 keeps roughly the
    last eighth; larger gamma averages less."""

    kind = "power"

    def __init__(self, model: nn.Module, gamma: float = 7.0):
        if gamma <= 0:
            raise ValueError(f"ema gamma must be positive, got {gamma}")
        self.gamma, self.steps = float(gamma), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay(self) -> float:
        return (1 - 1 / self.steps) ** (self.gamma + 1) if self.steps > 0 else 0.0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One step of the average: avg += (1 - decay) (new - avg) for every parameter, in one
        multi-tensor call instead of one per tensor (216 calls per step for the digits U-Net:
        each a kernel launch on a GPU and a GIL hand-over in a Ray worker); buffers are copied."""
        self.steps += 1
        torch._foreach_lerp_(list(self.model.parameters()), list(model.parameters()), 1 - self.decay())
        averaged_buffers, buffers = list(self.model.buffers()), list(model.buffers())
        if buffers:
            torch._foreach_copy_(averaged_buffers, buffers)

    def state_dict(self) -> dict:
        return {"steps": self.steps, "gamma": self.gamma, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.gamma = int(state["steps"]), float(state["gamma"])
        self.model.load_state_dict(state["model"])


class ExponentialEMA(EMA):
    """The classic exponential moving average at a fixed rate (Ho et al., 2020, appendix B:
    0.9999; Song & Ermon, 2020, technique 5: 0.999): avg <- rate avg + (1 - rate) new from the
    first step on, so after t steps the initial weights keep rate^t of the average, as in the
    papers' TensorFlow and PyTorch code (no warm-up of the rate)."""

    kind = "exponential"

    def __init__(self, model: nn.Module, rate: float = 0.9999):
        if not 0 <= rate < 1:
            raise ValueError(f"ema rate must lie in [0, 1), got {rate}")
        self.rate, self.steps = float(rate), 0
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    def decay(self) -> float:
        return self.rate

    def state_dict(self) -> dict:
        return {"steps": self.steps, "rate": self.rate, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.steps, self.rate = int(state["steps"]), float(state["rate"])
        self.model.load_state_dict(state["model"])


def build_ema(model: nn.Module, settings: dict) -> EMA:
    """The average a run's `settings` name: {"kind": "power", "gamma": g} or
    {"kind": "exponential", "rate": r}."""
    kind = settings.get("kind", "power")
    if kind == "power":
        return EMA(model, settings["gamma"])
    if kind == "exponential":
        return ExponentialEMA(model, settings["rate"])
    raise ValueError(f"ema kind must be one of {EMA_KINDS}, got {kind!r}")
