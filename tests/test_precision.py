"""The GPU path's options, exercised on the CPU at a tiny size: bf16 and fp16 autocast in the
training step (fp16 with its loss scale), channels-last weights and batches, torch.compile,
and weights saved so that any device loads them."""
from __future__ import annotations

import pytest
import torch

from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.ema import EMA
from diffusion_core.training.precision import Precision, as_channels_last, tune_network
from diffusion_core.training.step import OVERFLOW, TAKEN, adam, training_step

UNET = {"framework": "ddpm", "process": {"kind": "vp"}, "parameterization": "eps", "sigma_data": 0.5,
        "loss": {"kind": "ddpm"}, "data_shape": [1, 8, 8],
        "network": {"kind": "unet", "channels": 1, "image_size": 8, "base": 16, "mults": [1, 2],
                    "blocks": 1, "emb_dim": 32}}


def _parts(seed: int = 0):
    torch.manual_seed(seed)
    model = DiffusionModel(UNET)
    optimizer = adam(model.denoiser.net.parameters(), 1e-3)
    return model, optimizer, EMA(model.denoiser.net)


def _step(model, optimizer, ema, precision, seed: int = 0):
    x = torch.randn(16, 1, 8, 8, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    return training_step(model, model.denoiser, optimizer, ema, x, torch.Generator().manual_seed(seed),
                         1e-3, 1.0, precision)


def test_bf16_autocast_gives_the_fp32_loss_to_bf16_accuracy_and_keeps_fp32_weights():
    fp32, bf16 = _step(*_parts(), Precision("fp32")), _step(*_parts(), Precision("bf16"))
    assert fp32.status == bf16.status == TAKEN
    assert bf16.loss.dtype == torch.float32
    assert abs(float(bf16.loss) - float(fp32.loss)) < 0.02 * float(fp32.loss)  # bf16 keeps ~3 digits
    model, optimizer, ema = _parts()
    _step(model, optimizer, ema, Precision("bf16"))
    assert all(p.dtype == torch.float32 for p in model.denoiser.net.parameters())


def test_an_fp16_overflow_lowers_the_loss_scale_and_changes_no_weight():
    model, optimizer, ema = _parts()
    precision = Precision("fp16")
    precision.load_state_dict({**precision.state_dict(), "scale": 2.0 ** 60})  # certain to overflow fp16
    before = [p.detach().clone() for p in model.denoiser.net.parameters()]
    result = _step(model, optimizer, ema, precision)
    assert result.status == OVERFLOW and torch.isfinite(result.loss)
    assert precision.state_dict()["scale"] == 2.0 ** 59
    assert all(torch.equal(a, b) for a, b in zip(before, model.denoiser.net.parameters()))
    assert ema.steps == 0
    precision.load_state_dict({**precision.state_dict(), "scale": 2.0 ** 8})
    assert _step(model, optimizer, ema, precision).status == TAKEN and ema.steps == 1


def test_an_unknown_precision_is_refused_by_name():
    with pytest.raises(ValueError, match="precision must be one of"):
        Precision("fp8")


def test_channels_last_changes_the_memory_order_not_the_denoiser():
    model = _parts()[0]
    x = torch.randn(4, 1, 8, 8)
    alpha, sigma = torch.full((4,), 0.8), torch.full((4,), 0.6)
    plain = model.denoiser(x, alpha, sigma).x0
    seen_by_wrap = []  # DDP sizes its gradient buckets by the strides it sees when it wraps
    net = tune_network(model.denoiser.net, channels_last=True,
                       wrap=lambda net: seen_by_wrap.append(net) or net)
    first_conv = next(p for p in seen_by_wrap[0].parameters() if p.dim() == 4)
    assert first_conv.is_contiguous(memory_format=torch.channels_last)
    batch = as_channels_last(x, True)
    assert batch.is_contiguous(memory_format=torch.channels_last) and torch.equal(batch, x)
    torch.testing.assert_close(model.wrap(net)(batch, alpha, sigma).x0, plain, atol=1e-5, rtol=1e-5)
    vectors = torch.randn(4, 2)
    assert as_channels_last(vectors, True) is vectors


MLP = {**UNET, "loss": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "network"},
       "parameterization": "edm", "data_shape": [2],
       "network": {"kind": "mlp", "dim": 2, "width": 32, "depth": 2, "emb_dim": 16}}


@pytest.mark.slow  # inductor compiles C++ for the forward and backward pass: about half a minute
def test_a_compiled_network_trains_like_the_eager_one():
    def parts():
        torch.manual_seed(0)
        model = DiffusionModel(MLP)
        return model, torch.optim.Adam(model.denoiser.net.parameters(), lr=1e-3), EMA(model.denoiser.net)

    (eager, e_opt, e_ema), (model, optimizer, ema) = parts(), parts()
    net = tune_network(model.denoiser.net, compile=True)
    assert net is not model.denoiser.net
    for seed in range(3):
        x = torch.randn(64, 2, generator=torch.Generator().manual_seed(seed))
        a = training_step(eager, eager.denoiser, e_opt, e_ema, x, torch.Generator().manual_seed(seed), 1e-3, 1.0)
        b = training_step(model, model.wrap(net), optimizer, ema, x, torch.Generator().manual_seed(seed), 1e-3, 1.0)
        torch.testing.assert_close(a.loss, b.loss, atol=1e-5, rtol=1e-5)
    for p, q in zip(eager.denoiser.net.parameters(), model.denoiser.net.parameters()):  # saved weights = trained
        torch.testing.assert_close(p, q, atol=1e-5, rtol=1e-5)


def test_saved_weights_load_onto_the_asked_device(tmp_path):
    model = _parts()[0]
    model.save(tmp_path / "m")
    loaded = DiffusionModel.load(tmp_path / "m", device="meta")
    assert all(p.device.type == "meta" for p in loaded.denoiser.net.parameters())
    again = DiffusionModel.load(tmp_path / "m")
    assert all(torch.equal(p, q) for p, q in zip(model.denoiser.net.parameters(), again.denoiser.net.parameters()))
