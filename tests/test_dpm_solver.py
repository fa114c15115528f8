"""DPM-Solver++ against independent references: its first-order step is DDIM's, its error
shrinks at second order towards the exact probability-flow ODE solution, and with an exact
denoiser it reaches the data distribution in few steps, closer than Heun at the same NFE."""
import math

import pytest
import torch

from diffusion_core.evaluation.metrics import sliced_wasserstein
from diffusion_core.models.analytic import two_mode_mixture
from diffusion_core.processes.ddpm_chain import DDPMChain
from diffusion_core.processes.sde import VESDE, VPSDE
from diffusion_core.samplers import ddpm, edm
from diffusion_core.samplers.dpm_solver import dpm_solver_pp_2m, dpm_solver_pp_step

S_MIN, S_MAX = 0.002, 80.0


def _start(n: int, seed: int) -> torch.Tensor:
    """x~ at noise level S_MAX: data variance is negligible beside S_MAX^2."""
    return torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * S_MAX


def test_the_first_order_step_is_ddim():
    chain, m = DDPMChain.from_process(VPSDE()), two_mode_mixture()
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(0))
    index, prev = 600, 420
    expected = ddpm.ddim_step(m, chain, x, index, prev, 0.0, 0.0)
    abar, abar_prev = chain.alphas_cumprod[index], chain.alphas_cumprod[prev]
    s, s_next = float(((1 - abar) / abar).sqrt()), float(((1 - abar_prev) / abar_prev).sqrt())
    x0 = m(x, abar.sqrt().expand(16).float(), (1 - abar).sqrt().expand(16).float()).x0
    rescaled = dpm_solver_pp_step(x.double() / abar.sqrt(), s, s_next, x0.double())
    assert torch.allclose(rescaled * abar_prev.sqrt(), expected.double(), atol=1e-5)


def _error(solver, steps: int, x_T, reference) -> float:
    x, _ = solver(two_mode_mixture(), x_T, edm.karras_sigmas(S_MIN, S_MAX, steps))
    return float((x - reference).norm(dim=1).mean())


def test_the_error_shrinks_at_second_order():
    x_T = _start(200, 1)
    reference, _ = edm.heun_pf_ode(two_mode_mixture(), x_T, edm.karras_sigmas(S_MIN, S_MAX, 800))
    errors = [_error(dpm_solver_pp_2m, steps, x_T, reference) for steps in (20, 40, 80)]
    orders = [math.log2(a / b) for a, b in zip(errors, errors[1:])]
    assert all(order > 1.6 for order in orders), (errors, orders)


def test_few_steps_reach_the_data_and_beat_heun_at_equal_nfe():
    m, g = two_mode_mixture(), torch.Generator().manual_seed(3)
    real_a, _ = m.sample(4000, g)
    real_b, _ = m.sample(4000, g)
    floor = sliced_wasserstein(real_a.numpy(), real_b.numpy())
    x_T = _start(4000, 2)
    x, nfe = dpm_solver_pp_2m(m, x_T, edm.karras_sigmas(S_MIN, S_MAX, 10))
    assert nfe == 10
    assert sliced_wasserstein(x.float().numpy(), real_a.numpy()) < 2 * floor + 0.02
    reference, _ = edm.heun_pf_ode(m, x_T[:300], edm.karras_sigmas(S_MIN, S_MAX, 800))
    dpm = _error(dpm_solver_pp_2m, 10, x_T[:300], reference)
    heun = _error(lambda d, x, s: edm.heun_pf_ode(d, x, s), 6, x_T[:300], reference)  # 11 NFE
    assert dpm < heun, (dpm, heun)


@pytest.mark.parametrize("spacing", ["logsnr", "time"])
@pytest.mark.parametrize("process", [{"kind": "vp"}, {"kind": "subvp"},
                                     {"kind": "ve", "sigma_min": 0.01, "sigma_max": 50.0}])
def test_every_process_reaches_the_data_in_20_steps(process, spacing):
    """Through the registry, DPM-Solver++ serves VP, sub-VP and VE models alike: 20 NFE with
    the exact denoiser give the data's mode weights and spreads."""
    from diffusion_core.frameworks import DiffusionModel

    m = two_mode_mixture()
    config = {"framework": "sde", "process": process, "parameterization": "eps", "sigma_data": 0.5,
              "loss": {"kind": "dsm"}, "network": {"kind": "mlp", "dim": 2, "width": 8, "depth": 1,
                                                   "emb_dim": 8}, "data_shape": [2]}
    model = DiffusionModel(config)
    model.denoiser = m
    x, nfe = model.sample(3000, (2,), {"name": "dpmpp_2m", "steps": 20, "spacing": spacing},
                          torch.Generator().manual_seed(4))
    assert nfe == 20
    assert float((m.component_fractions(x) - m.weights).abs().max()) < 0.03  # the modes' weights
    k = m.nearest_component(x)
    for c in range(len(m.weights)):  # and each mode's spread
        assert abs(float((x[k == c].double() - m.means[c]).std(0).mean()) - m.std) < 0.1 * m.std


def test_log_snr_spacing_is_geometric_and_both_spacings_are_checked():
    from diffusion_core.samplers.registry import resolve_settings

    levels = edm.log_snr_sigmas(0.01, 80.0, 5)
    assert levels[-1] == 0 and torch.allclose(levels[1:-1] / levels[:-2], (levels[1] / levels[0]).expand(4))
    assert float(levels[0]) == pytest.approx(80.0) and float(levels[-2]) == pytest.approx(0.01)
    assert resolve_settings({"name": "dpmpp_2m"})["spacing"] == "time"
    with pytest.raises(ValueError, match="^spacing: must be one of"):
        resolve_settings({"name": "dpmpp_2m", "spacing": "uniform"})


@pytest.mark.parametrize("process", [VPSDE(), VPSDE(schedule="cosine"), VESDE(sigma_min=0.01, sigma_max=50.0)])
def test_time_spacing_is_uniform_in_t_down_to_t_over_steps(process):
    """spacing: time puts the levels at t = T, T (1 - 1/n), ..., T / n (diffusers' "linspace"
    timesteps), then 0; where s(T) exceeds EDM's 80 the grid starts at the time of 80."""
    from diffusion_core.samplers.registry import dpmpp_sigmas

    s_max = min(float(process.noise_level(process.T)), edm.SIGMA_MAX)
    levels = dpmpp_sigmas(process, {"steps": 8, "spacing": "time"}, s_max)
    assert len(levels) == 9 and levels[-1] == 0 and float(levels[0]) == pytest.approx(s_max, rel=1e-6)
    t_top = float(process.time_of_noise_level(s_max))
    times = process.time_of_noise_level(levels[:-1])
    assert torch.allclose(times, torch.linspace(t_top, t_top / 8, 8, dtype=torch.float64), atol=1e-6)
