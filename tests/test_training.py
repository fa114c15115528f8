"""The shared optimisation step: learning rate, clipping, EMA, and that it learns; the batches' position."""
from __future__ import annotations

import itertools

import numpy as np
import torch

from diffusion_core.data.shards import write_shards
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.training.batches import Batches
from diffusion_core.training.ema import EMA
from diffusion_core.training.step import training_step

CONFIG = {"framework": "ddpm", "process": {"kind": "vp", "beta_min": 0.1, "beta_max": 20.0, "N": 1000},
          "parameterization": "edm", "sigma_data": 1.0, "data_shape": [2],
          "network": {"kind": "mlp", "dim": 2, "width": 64, "depth": 2, "emb_dim": 16},
          "loss": {"kind": "lognormal", "p_mean": -1.2, "p_std": 1.2, "weighting": "network"}}


def test_training_step_sets_the_lr_clips_and_updates_the_ema():
    torch.manual_seed(0)
    model = DiffusionModel(CONFIG)
    net = model.denoiser.net
    optimizer, ema = torch.optim.Adam(net.parameters(), lr=1.0), EMA(net, 7.0)
    x, generator = torch.randn(256, 2) * 0.3 + 1.0, torch.Generator().manual_seed(0)
    before = [p.detach().clone() for p in ema.model.parameters()]
    losses = [training_step(model, model.denoiser, optimizer, ema, x, generator, 3e-3, grad_clip=0.5)
              for _ in range(200)]
    assert optimizer.param_groups[0]["lr"] == 3e-3
    assert all(loss.grad_fn is None and status == "taken" for loss, _, status in losses)
    # the returned norm is the one before clipping; the gradients the step used are clipped
    assert max(float(norm) for _, norm, _ in losses) > 0.5
    _, norm, _ = training_step(model, model.denoiser, optimizer, ema, x * 10, generator, 3e-3, grad_clip=0.5)
    clipped = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert float(norm) > 0.5 and float(clipped) <= 0.5 + 1e-5
    first, last = (torch.stack([loss for loss, _, _ in part]).mean() for part in (losses[:20], losses[-20:]))
    assert last < 0.8 * first
    assert any(not torch.equal(b, p) for b, p in zip(before, ema.model.parameters()))


def test_clip_grad_norm_is_torchs_to_the_bit():
    """The multi-tensor clip (one norm call instead of one move per tensor) returns the norm
    torch.nn.utils.clip_grad_norm_ returns and leaves the same gradients, clipped or not."""
    from diffusion_core.training.step import clip_grad_norm

    for max_norm in (1e-3, 1e6):
        torch.manual_seed(1)
        nets = [torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Flatten(),
                                    torch.nn.Linear(4 * 6 * 6, 3)) for _ in range(2)]
        nets[1].load_state_dict(nets[0].state_dict())
        x = torch.randn(8, 1, 8, 8)
        for net in nets:
            net(x).square().sum().backward()
        expected = torch.nn.utils.clip_grad_norm_(nets[0].parameters(), max_norm)
        assert torch.equal(clip_grad_norm(list(nets[1].parameters()), max_norm), expected)
        for p, q in zip(nets[0].parameters(), nets[1].parameters()):
            assert torch.equal(p.grad, q.grad)
    assert float(clip_grad_norm(list(torch.nn.Linear(2, 2).parameters()), 1.0)) == 0.0  # no gradients yet


def test_ema_averages_parameters_and_copies_buffers():
    """Each parameter moves by (1 - decay) towards the network's; buffers (batch-norm's running
    statistics) are the network's own."""
    torch.manual_seed(2)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = EMA(net, 7.0)
    ema.update(net)  # the first step copies: decay 0
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(16, 3))  # training mode: the running statistics move
    before = [p.clone() for p in ema.model.parameters()]
    ema.update(net)
    weight = 1 - ema.decay()
    for old, avg, new in zip(before, ema.model.parameters(), net.parameters()):
        torch.testing.assert_close(avg, old + weight * (new - old))
    for avg, new in zip(ema.model.buffers(), net.buffers()):
        assert torch.equal(avg, new)


def test_batches_resumed_at_a_position_go_on_as_if_never_stopped(tmp_path):
    """Epoch 0 streams the shards, later ones reshuffle the cached first epoch: a Batches that
    seeks to any position, the cached epochs included, yields what the uninterrupted one did."""
    x = np.arange(48, dtype=np.float32).reshape(24, 2)
    write_shards(tmp_path / "shards", {"train": (x, None)}, 6, {})

    def batches():
        return Batches(tmp_path / "shards", rank=0, world=1, batch_size=4, seed=3)

    whole = batches()
    run = [(b, whole.position()) for b in itertools.islice(whole, 15)]  # 6 batches an epoch
    assert [position for _, position in run[4:8]] == [[0, 5], [0, 6], [1, 1], [1, 2]]
    assert not torch.equal(torch.cat([b for b, _ in run[6:12]]), torch.cat([b for b, _ in run[:6]]))
    for at in (4, 5, 9):  # a checkpoint after batch `at`
        resumed = batches()
        resumed.seek(*run[at][1])
        assert all(torch.equal(a, b) for (a, _), b in zip(run[at + 1:], resumed))


def test_a_stop_raised_inside_c_code_is_still_read_as_the_stop():
    """SIGTERM raises where the main thread is; inside C code (numpy, torch) the exception can
    come back as a SystemError. The stop is recorded, so the run ends KILLED and the flow
    Cancelled whatever the exception became; a new block starts clean."""
    import os
    import signal
    import time

    import pytest

    from flows.distributed import stop_request
    from flows.tracking.run_status import _error_text, end_status

    with pytest.raises(stop_request.TrainingInterrupted):
        with stop_request.signals_interrupt("test"):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert "SIGTERM" in stop_request.stop_received()
    from_c = SystemError("returned a result with an exception set")
    assert end_status(from_c) == "KILLED"
    # tag `error` says the stop, not only what C code made of it
    assert _error_text(from_c) == f"{stop_request.stop_received()} (raised here as SystemError: {from_c})"
    assert _error_text(stop_request.TrainingInterrupted(stop_request.stop_received())).startswith(
        "TrainingInterrupted: test: SIGTERM")
    with stop_request.signals_interrupt("again"):
        assert stop_request.stop_received() is None
