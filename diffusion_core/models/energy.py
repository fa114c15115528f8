"""Energy-based models as score models: s(x, c) = -grad_x E(x, c).

An energy network maps (x, c_noise) to one scalar per example. Any of the shared networks
(`diffusion_core.models.networks.MLP`, `UNet`) serves: their output has the shape of x, and
the energy is its sum over the non-batch dims. For the MLP that sum is a final
Linear(width, 1) written with redundant weights (sum_j (W h + b)_j = (1^T W) h + 1^T b), so
nothing is lost in expressiveness and the network keeps its JSON config (`build_network`)
unchanged; a network that already returns (B,) or (B, 1) is used as is.

`EnergyMLP` is a plain SiLU MLP with a scalar head for low-dimensional toys: score matching on
an energy differentiates the network two or three times (score, its divergence, the parameter
gradient), and there the shared residual MLP (LayerNorm, Fourier embedding, residual blocks)
costs several times more per step on 2-D data and trains to a worse score in the same budget
(docs/results.md has the measurement).

The wrapper works in both regimes:
- training (grad enabled): the score is built with create_graph=True, so a loss on the score
  (score matching) back-propagates into the energy's parameters, and a score evaluated at an
  x that itself requires grad (exact / sliced score matching) stays differentiable in x;
- sampling (under torch.no_grad, or torch.inference_mode): grad is enabled locally for x only;
  the parameters receive no gradient and the returned score is detached.

`EnergyDenoiser` makes any of the pipeline's networks an energy model behind the `Denoiser`
interface, so the pipeline's objectives and samplers take it unchanged. In the rescaled space
x~ = x / alpha = x0 + s eps (see preconditioning.py) its energy is the Gaussian energy around
the denoised point,

    E(x~, s) = |x~ - D(x~, s)|^2 / (2 s^2) = |eps_F(x~, s)|^2 / 2,

with D and eps_F the network's output read by the chosen parameterization (cf. Salimans & Ho,
2021, "Should EBMs model the energy or the score?"); its eps is s grad_x~ E, i.e. its score is
-grad E. Where D varies slowly (large s, or along the data) -grad E = -(I - J_D)^T (x~ - D) / s^2
is close to Tweedie's -(x~ - D) / s^2, so the 1/s^2 scale comes from the formula, not from the
network; with the "x0" parameterization D is the network output itself.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from diffusion_core.models.denoiser import Denoiser, Prediction
from diffusion_core.tensors import append_dims, batch_of, sum_except_batch


def reduce_energy(out: torch.Tensor) -> torch.Tensor:
    """(B,) energies from a network output shaped (B,), (B, 1) or like x (summed)."""
    return out if out.ndim == 1 else sum_except_batch(out)


class EnergyMLP(nn.Module):
    """E(x, c) = MLP([x, c]) -> (B,): `depth` hidden SiLU layers of `width`, a scalar head.
    SiLU keeps the energy smooth, so its score and the score's divergence are well defined."""

    def __init__(self, dim: int, width: int = 64, depth: int = 3, conditional: bool = False):
        super().__init__()
        self.hparams = dict(kind="energy_mlp", dim=dim, width=width, depth=depth,
                            conditional=conditional)
        layers, n_in = [], dim + int(conditional)
        for _ in range(depth):
            layers += [nn.Linear(n_in, width), nn.SiLU()]
            n_in = width
        self.body, self.conditional = nn.Sequential(*layers, nn.Linear(n_in, 1)), conditional

    def forward(self, x: torch.Tensor, c) -> torch.Tensor:
        h = x.flatten(1)
        if self.conditional:
            h = torch.cat([h, batch_of(c, x).to(h)[:, None]], dim=1)
        return self.body(h)[:, 0]


class EnergyScore(nn.Module):
    """Wraps an energy network E(x, c) into a score model s(x, c) = -grad_x E(x, c).

    `condition` maps the noise level handed to the score model to the network's condition
    (default: passed through unchanged, as a (B,) tensor).
    """

    def __init__(self, net: nn.Module, condition: Callable | None = None):
        super().__init__()
        self.net, self.condition = net, condition

    def energy(self, x: torch.Tensor, c) -> torch.Tensor:
        """E(x, c), one value per example (B,)."""
        c = batch_of(c, x)
        return reduce_energy(self.net(x, self.condition(c) if self.condition else c))

    def forward(self, x: torch.Tensor, c) -> torch.Tensor:
        training = torch.is_grad_enabled()
        if torch.is_inference_mode_enabled():
            with torch.inference_mode(False):
                return self._score(x.clone(), c.clone() if torch.is_tensor(c) else c, False)
        return self._score(x, c, training)

    def _score(self, x: torch.Tensor, c, create_graph: bool) -> torch.Tensor:
        with torch.enable_grad():
            x_in = x if (create_graph and x.requires_grad) else x.detach().requires_grad_(True)
            energy = self.energy(x_in, c)
            (grad,) = torch.autograd.grad(energy.sum(), x_in, create_graph=create_graph)
        return -grad if create_graph else -grad.detach()


class EnergyDenoiser(Denoiser):
    """A `Denoiser` whose prediction comes from the energy E(x~, s) = |eps_F(x~, s)|^2 / 2:
    eps = s grad_x~ E (score -grad_x~ E), x0 = x~ - s eps. Built like `Denoiser`; the gradient
    keeps its graph in training (see `EnergyScore`)."""

    def __init__(self, net: nn.Module, parameterization: str = "x0", sigma_data: float = 0.5,
                 conditioning=None):
        super().__init__(net, parameterization, sigma_data, conditioning)
        self.energy_score = EnergyScore(self.energy)  # holds a bound method: no parameters

    def energy(self, x_tilde: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """E(x~, s) per example (B,), from the network read as a score model."""
        return 0.5 * sum_except_batch(super().forward(x_tilde, torch.ones_like(s), s).eps ** 2)

    def forward(self, x: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor) -> Prediction:
        s = sigma / alpha
        x_tilde = x / append_dims(alpha, x.ndim)
        eps = -append_dims(s, x.ndim) * self.energy_score(x_tilde, s)
        return Prediction(x_tilde - append_dims(s, x.ndim) * eps, eps)
