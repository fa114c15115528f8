"""Frameworks as named presets: (process, parameterization, loss, default sampler).

`DiffusionModel` bundles a process with a denoiser and is what the pipeline trains, saves and
samples; it is rebuilt from a JSON config plus weights, never from pickled code.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from . import samplers
from .ddpm import DDPMChain
from .losses import ddpm_loss, lognormal_loss
from .nets import build_network
from .preconditioning import Denoiser
from .sde import VPSDE


@dataclass(frozen=True)
class Preset:
    process: str
    parameterization: str
    loss: str
    sampler: str


FRAMEWORKS = {
    "ddpm": Preset(process="vp", parameterization="eps", loss="ddpm", sampler="ancestral"),
}
SAMPLERS = ("ancestral", "ddim", "heun")


class DiffusionModel:
    """A process, a chain over its discretization and a denoiser around one network."""

    def __init__(self, config: dict, network: torch.nn.Module | None = None):
        self.config = config
        framework = config["framework"]
        if framework not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {sorted(FRAMEWORKS)}, got {framework!r}")
        self.process = VPSDE(**config["process"])
        self.chain = DDPMChain.from_process(self.process)
        net = network if network is not None else build_network(config["network"])
        self.denoiser = Denoiser(net, config["parameterization"], config["sigma_data"])

    def loss(self, x0: torch.Tensor, generator=None, denoiser: Denoiser | None = None):
        """Per-example training loss over the configured noise distribution: "uniform" is DDPM's
        t ~ U{1..N}, "lognormal" EDM's. `denoiser` lets a DDP-wrapped copy stand in."""
        denoiser = denoiser or self.denoiser
        noise = self.config.get("noise", {"distribution": "uniform"})
        weighting = self.config.get("weighting", "network")
        if noise["distribution"] == "lognormal":
            return lognormal_loss(denoiser, x0, noise["p_mean"], noise["p_std"], generator, weighting)
        return ddpm_loss(denoiser, self.chain, x0, generator, weighting)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple, sampler: str = "ancestral", steps: int = 50,
               generator=None, clip: float | None = None, progress=None, denoiser=None):
        """n samples of per-example `shape`; returns (samples, number of network evaluations)."""
        denoiser = (denoiser or self.denoiser).eval()
        x = self.process.prior_sampling((n, *shape), generator)
        if sampler == "ancestral":
            return samplers.ddpm_ancestral(denoiser, self.chain, x, generator, clip, progress)
        if sampler == "ddim":
            return samplers.ddim(denoiser, self.chain, x, steps, 0.0, generator, clip, progress)
        if sampler == "heun":
            s_min, s_max = (float(self.chain.noise_level(i)) for i in (0, self.chain.N - 1))
            sigmas = samplers.karras_sigmas(s_min, s_max, (steps + 1) // 2)
            x = x * (1 + s_max**2) ** 0.5  # x_T / alpha_T: the rescaled space of the ODE
            out, nfe = samplers.heun_pf_ode(denoiser, x, sigmas, progress)
            return (out.clamp(-clip, clip) if clip is not None else out), nfe
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")

    def save(self, directory: Path, state_dict: dict | None = None) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "model.json").write_text(json.dumps(self.config, indent=2))
        torch.save(state_dict or self.denoiser.net.state_dict(), directory / "weights.pt")

    @classmethod
    def load(cls, directory: Path) -> "DiffusionModel":
        directory = Path(directory)
        if not (directory / "model.json").is_file():
            raise FileNotFoundError(f"no model.json in {directory}")
        model = cls(json.loads((directory / "model.json").read_text()))
        model.denoiser.net.load_state_dict(torch.load(directory / "weights.pt", weights_only=True))
        return model
