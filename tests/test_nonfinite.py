"""A non-finite loss is caught at the step it occurs: the step is not taken, and by default the
run stops there naming the step and the last good checkpoint, without writing a model."""
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.ema import EMA
from diffusion_core.training.nonfinite import NonFinitePolicy
from diffusion_core.training.step import NONFINITE, OVERFLOW, TAKEN, is_finite, training_step

CONFIG = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "edm", "sigma_data": 1.0,
          "network": {"kind": "mlp", "dim": 2, "width": 32, "depth": 2, "emb_dim": 16},
          "loss": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "network"},
          "data_shape": [2]}


def _state(model, optimizer, ema):
    return ([p.detach().clone() for p in model.denoiser.net.parameters()],
            [p.detach().clone() for p in ema.model.parameters()], optimizer.state_dict()["state"])


def test_a_non_finite_step_is_not_taken():
    torch.manual_seed(0)
    model = DiffusionModel(CONFIG)
    optimizer = torch.optim.Adam(model.denoiser.net.parameters())
    ema, generator = EMA(model.denoiser.net), torch.Generator().manual_seed(0)
    x = torch.randn(64, 2, generator=generator)
    loss, norm, status = training_step(model, model.denoiser, optimizer, ema, x, generator, 1e-3, 1.0)
    assert is_finite(loss, norm) and status == TAKEN
    weights, averaged, adam = _state(model, optimizer, ema)
    bad = x.clone()
    bad[3] = float("nan")
    loss, norm, status = training_step(model, model.denoiser, optimizer, ema, bad, generator, 1e-3, 1.0)
    assert not is_finite(loss, norm) and status == NONFINITE
    after = _state(model, optimizer, ema)
    assert all(torch.equal(a, b) for a, b in zip(weights + averaged, after[0] + after[1]))
    assert all(torch.equal(adam[k]["exp_avg"], after[2][k]["exp_avg"]) for k in adam)
    assert ema.steps == 1


def test_the_policy_stops_at_once_or_after_the_skip_limit():
    stop = NonFinitePolicy("stop", limit=10)
    assert stop.counts(TAKEN, 0) and not stop.counts(NONFINITE, 1) and stop.stopped_at == 2
    skip = NonFinitePolicy("skip", limit=2)
    assert not skip.counts(NONFINITE, 5) and not skip.counts(NONFINITE, 5) and skip.stopped_at == 0
    assert skip.counts(TAKEN, 5) and not skip.counts(NONFINITE, 6)
    assert skip.skipped == 3 and skip.stopped_at == 7


def test_an_fp16_overflow_is_neither_a_step_nor_a_fault():
    policy = NonFinitePolicy("stop", limit=0)
    assert not policy.counts(OVERFLOW, 3) and not policy.counts(OVERFLOW, 3)
    assert policy.overflows == 2 and policy.skipped == 0 and policy.stopped_at == 0
