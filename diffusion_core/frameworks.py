"""The frameworks, and the model the pipeline trains, saves and samples.

A framework is (process, parameterization, loss, default sampler), chosen by its params section. `DiffusionModel` is rebuilt
from a JSON config plus weights, never from pickled code. Its config names:

  process:          {"kind": "vp" | "subvp" | "ve", ...the process's constructor arguments}
  parameterization: how the network output is read ("eps" | "x0" | "edm"), with sigma_data
  conditioning:     what the network sees and is conditioned on ("edm" | "ddpm" | "ncsnv2";
                    models.conditioning); absent in models saved before the choice: "edm"
  loss:             {"kind": one of LOSSES, ...its arguments}
  network:          the network's JSON config (models.networks.build_network)
  model_kind:       "score" (default: the network is read as a denoiser) or "energy" (the
                    network defines an energy whose -grad_x is the score; models.energy.EnergyDenoiser)
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from diffusion_core.data.atomic import atomic_path, write_json
from diffusion_core.models.conditioning import build_conditioning
from diffusion_core.models.denoiser import Denoiser
from diffusion_core.models.energy import EnergyDenoiser
from diffusion_core.models.networks import build_network
from diffusion_core.noise import NoiseSource
from diffusion_core.objectives import ncsn
from diffusion_core.objectives.continuous_dsm import continuous_dsm_loss
from diffusion_core.objectives.denoising import ddpm_loss, lognormal_loss
from diffusion_core.processes.build import build_process
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VPSDE
from diffusion_core.samplers import registry as sampler_registry

# The three frameworks. What each trains and samples with (process, parameterization, loss,
# sampler) is its section of the params, written into the model's JSON config below.
FRAMEWORKS = ("ddpm", "ncsn", "sde")


def _ddpm_loss(model, denoiser, x0, generator, weighting="network"):
    return ddpm_loss(denoiser, model.chain, x0, generator, weighting)


def _lognormal_loss(model, denoiser, x0, generator, p_mean=-1.2, p_std=1.2, weighting="network"):
    return lognormal_loss(denoiser, x0, p_mean, p_std, generator, weighting)


def _dsm_loss(model, denoiser, x0, generator, eps=1e-5, weighting="sigma2", p_mean=-1.2, p_std=1.2,
              importance=False):
    return continuous_dsm_loss(denoiser, model.process, x0, eps, weighting, generator, p_mean, p_std,
                               importance)


# Each loss: (model, denoiser, x0, generator, **arguments from the config) -> per-example loss.
LOSSES = {"ddpm": _ddpm_loss, "lognormal": _lognormal_loss, "dsm": _dsm_loss}
LOSSES.update(ncsn=ncsn.dsm_objective, ncsn_ssm=ncsn.ssm_objective, ncsn_exact=ncsn.exact_objective)
MODEL_KINDS = {"score": Denoiser, "energy": EnergyDenoiser}


class DiffusionModel:
    """A process and a denoiser around one network, with the framework's loss."""

    def __init__(self, config: dict, network: torch.nn.Module | None = None):
        self.config = config
        if config["framework"] not in FRAMEWORKS:
            raise ValueError(f"framework must be one of {sorted(FRAMEWORKS)}, "
                             f"got {config['framework']!r}")
        if config["loss"]["kind"] not in LOSSES:
            raise ValueError(f"loss.kind must be one of {sorted(LOSSES)}, got {config['loss']['kind']!r}")
        self.process = build_process(config["process"])
        net = network if network is not None else build_network(config["network"])
        self.denoiser = self.wrap(net)

    def wrap(self, net: torch.nn.Module) -> Denoiser:
        """The model's denoiser around `net` (a DDP-wrapped copy during training, say)."""
        kind = self.config.get("model_kind", "score")
        if kind not in MODEL_KINDS:
            raise ValueError(f"model_kind must be one of {sorted(MODEL_KINDS)}, got {kind!r}")
        conditioning = build_conditioning(self.config.get("conditioning", "edm"), self.config["sigma_data"],
                                          self.process)
        return MODEL_KINDS[kind](net, self.config["parameterization"], self.config["sigma_data"], conditioning)

    @property
    def chain(self) -> DDPMChain:
        """DDPM's discrete chain: the VP process's discretization."""
        if not isinstance(self.process, VPSDE):
            raise ValueError(f"the DDPM chain needs a vp process, not {type(self.process).__name__}")
        if not hasattr(self, "_chain"):
            self._chain = DDPMChain.from_process(self.process)
        return self._chain

    def loss(self, x0: torch.Tensor, generator=None, denoiser: Denoiser | None = None):
        """Per-example training loss; `denoiser` lets a DDP-wrapped copy stand in."""
        arguments = dict(self.config["loss"])
        kind = arguments.pop("kind")
        return LOSSES[kind](self, denoiser or self.denoiser, x0, generator, **arguments)

    @torch.no_grad()
    def sample(self, n: int, shape: tuple, settings: dict, noise: NoiseSource = None,
               clip: float | None = None, progress=None):
        """n samples of per-example `shape` drawn by the registered sampler `settings["name"]`
        (samplers.registry); returns (samples, number of network evaluations)."""
        self.denoiser.eval()
        x = self.process.prior_sampling((n, *shape), noise)
        x, nfe = sampler_registry.draw(self, x, settings, noise, clip, progress)
        return (x.clamp(-clip, clip) if clip is not None else x), nfe

    def save(self, directory: Path, state_dict: dict | None = None) -> None:
        directory = Path(directory)
        write_json(directory / "model.json", self.config)
        # to a file object: torch.save names the archive after a path it is given, and the
        # temporary name would make the bytes (and their sha256) differ between equal saves
        with atomic_path(directory / "weights.pt") as tmp, open(tmp, "wb") as fh:
            weights = state_dict or self.denoiser.net.state_dict()
            torch.save({name: tensor.detach().cpu() for name, tensor in weights.items()}, fh)  # any device loads it

    @classmethod
    def load(cls, directory: Path, device: str | torch.device = "cpu") -> "DiffusionModel":
        """The model saved in `directory`, its network on `device` (samplers keep their own
        arithmetic where they create it; the denoiser moves what the network sees)."""
        directory = Path(directory)
        if not (directory / "model.json").is_file():
            raise FileNotFoundError(f"no model.json in {directory}")
        model = cls(json.loads((directory / "model.json").read_text()))
        weights = torch.load(directory / "weights.pt", map_location="cpu", weights_only=True)
        try:
            model.denoiser.net.load_state_dict(weights)
        except RuntimeError as err:  # missing, unexpected or differently shaped tensors
            network = model.config["network"]
            raise ValueError(f"{directory / 'weights.pt'} does not fit the network of its "
                             f"model.json ({network}): {err}") from err
        model.denoiser.net.to(device)
        return model
