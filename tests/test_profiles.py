"""The params profiles at the papers' network sizes (profiles/*.yaml, docs/profiles.md): each
validates laid over params.yaml, builds its paper's network at the paper's parameter count, and
trains and samples a step on the CPU; the default U-Net stays as it was."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch

from benchmarks.network_throughput import PROFILE_SHAPES, train_step_flops
from diffusion_core.frameworks import DiffusionModel
from diffusion_core.models.networks import UNet, build_network
from diffusion_core.samplers.ddpm import ddpm_ancestral_step
from flows.config.loader import PROFILES, read_params
from flows.config.params import ConfigError, load_params, parse_params
from flows.entry import cli
from flows.stages.train import model_config

ROOT = Path(__file__).resolve().parents[1]
PARAMS = ROOT / "params.yaml"
# The paper's count where one is published (Ho et al. 2020, app. B: 35.7M); else None: the
# count by hand (hand_count) is the reference.
PAPER_PARAMS = {"cifar10-ddpm": 35.7e6, "celeba64-ddim": None}


def profile(name: str):
    params = parse_params(read_params(PARAMS, name))
    run = params.train.frameworks[0]
    return params, run, model_config(params, run, {"kind": "image", "shape": list(PROFILE_SHAPES[name])})


def hand_count(channels: int, base: int, mults: list, blocks: int, attention: list, emb_in: int,
               emb_dim: int, **_) -> int:
    """Parameters of DDPM's U-Net layer by layer: conv k x k (k^2 c_in c_out + c_out), dense
    (c_in c_out + c_out), GroupNorm (2c); residual blocks with a 1x1 shortcut where the widths
    differ; attention = GroupNorm + q, k, v, out dense; a 3x3 conv per down- and upsampling."""
    def conv(k, i, o):
        return k * k * i * o + o

    def dense(i, o):
        return i * o + o

    def res(i, o):
        return 2 * i + conv(3, i, o) + dense(emb_dim, o) + 2 * o + conv(3, o, o) + (conv(1, i, o) if i != o else 0)

    def attn(c):
        return 2 * c + 4 * dense(c, c)

    widths, c = [base * m for m in mults], base
    total, skips = dense(emb_in, emb_dim) + dense(emb_dim, emb_dim) + conv(3, channels, base), [base]
    for level, width in enumerate(widths):
        for _ in range(blocks):
            total, c = total + res(c, width) + (attn(width) if level in attention else 0), width
            skips.append(c)
        if level < len(widths) - 1:
            total += conv(3, c, c)
            skips.append(c)
    total += 2 * res(c, c) + attn(c)
    for level, width in reversed(list(enumerate(widths))):
        for _ in range(blocks + 1):
            total, c = total + res(c + skips.pop(), width) + (attn(width) if level in attention else 0), width
        if level > 0:
            total += conv(3, c, c)
    return total + 2 * c + conv(3, c, channels)


def test_every_profile_file_is_tested():
    assert sorted(p.stem for p in PROFILES.glob("*.yaml")) == sorted(PAPER_PARAMS) == sorted(PROFILE_SHAPES)


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_profile_validates_and_builds_the_papers_network(name):
    params, run, config = profile(name)
    assert params.ray.use_gpu and params.train.precision == "bf16" and params.ray.num_workers > 1
    choices = params.training(run, "image")
    assert choices.batch_size == 128 and choices.ema.record() == {"kind": "exponential", "rate": 0.9999}
    assert (choices.optimizer.lr, choices.optimizer.warmup_steps, choices.optimizer.grad_clip) == (2e-4, 5000, 1.0)
    network = config["network"]
    count = sum(p.numel() for p in build_network(network).parameters())
    assert count == hand_count(**network)
    if PAPER_PARAMS[name] is not None:
        assert abs(count / PAPER_PARAMS[name] - 1) < 0.01


def test_cifar10_profile_is_ddpms_recipe():
    params, run, config = profile("cifar10-ddpm")
    assert params.image.steps == 800_000 and params.framework(run).sampler == {"name": "ancestral"}
    assert config["conditioning"] == "ddpm" and config["network"]["embedding"] == "positional"
    assert sum(p.numel() for p in build_network(config["network"]).parameters()) == 35_746_307


@pytest.mark.parametrize("name", sorted(PAPER_PARAMS))
def test_one_training_and_one_sampling_step_on_the_cpu(name):
    params, run, config = profile(name)
    torch.manual_seed(0)
    model, shape = DiffusionModel(config), PROFILE_SHAPES[name]
    x0 = torch.rand(2, *shape) * 2 - 1
    model.loss(x0).mean().backward()
    grads = [p.grad for p in model.denoiser.net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    model.denoiser.eval()
    with torch.no_grad():
        x = torch.randn(2, *shape)
        step = ddpm_ancestral_step(model.denoiser, model.chain, x, model.chain.N - 1, torch.randn_like(x))
    assert step.shape == x.shape and torch.isfinite(step).all()


def test_train_step_flops_scale_with_the_batch():
    make = lambda: UNet(channels=3, image_size=8, base=16, mults=(1, 2), blocks=1, emb_dim=32)  # noqa: E731
    one, three = train_step_flops(make, (3, 8, 8), 1), train_step_flops(make, (3, 8, 8), 3)
    assert one > 0 and three == 3 * one


# The U-Net as it was before the profiles' options: sha256 of its state dict's "key shape" lines
GUARD = {"default": (152, 3_305_857, "ae89995a36601c7be11e2c2f86052c6c95bb08bd75560a24ea9ec925d0dfae33"),
         "digits": (108, 575_073, "d83e8fadda5f95f6fbd1650f16460ac3d60d6bf9fc9aff979720395ad03ce806")}
GUARD_ARGS = {"default": {}, "digits": dict(channels=1, image_size=8, base=32, mults=(1, 2), blocks=1, emb_dim=64)}


@pytest.mark.parametrize("which", sorted(GUARD))
def test_default_unet_is_unchanged(which):
    state = UNet(**GUARD_ARGS[which]).state_dict()
    text = "\n".join(f"{key} {tuple(value.shape)}" for key, value in state.items())
    assert (len(state), sum(v.numel() for v in state.values()),
            hashlib.sha256(text.encode()).hexdigest()) == GUARD[which]


def test_hparams_rebuild_the_same_network():
    net = build_network(profile("cifar10-ddpm")[2]["network"])
    again = build_network(net.hparams)
    assert list(again.state_dict()) == list(net.state_dict()) and again.hparams == net.hparams


def test_a_profile_is_laid_over_the_params(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("image: {network: {groups: 12}}\n")
    with pytest.raises(ConfigError, match=r"^image\.network\.groups: GroupNorm needs"):
        parse_params(read_params(PARAMS, str(path)))
    path.write_text("train: {frameworks: [ddpm-paper]}\nddpm: {recipes: {paper: {sampler: {name: ancestral}}}}\n")
    params = parse_params(read_params(PARAMS, str(path)))
    assert params.framework("ddpm-paper").sampler == {"name": "ancestral"}  # replaced whole, not merged
    assert params.framework("ddpm-paper").conditioning == "ddpm"  # the rest of the recipe stays
    with pytest.raises(ConfigError, match=r"^--profile: no profile named 'nope'"):
        read_params(PARAMS, "nope")


def test_cli_takes_a_profile(tmp_path, capsys):
    path = tmp_path / "mine.yaml"
    path.write_text("train: {frameworks: [ddpm-paper]}\n")
    assert cli.main(["check-params", "--params", str(PARAMS), "--profile", str(path)]) == 0
    assert '"ddpm-paper"' in capsys.readouterr().out
    path.write_text("image: {network: {heads: 0}}\n")
    assert cli.main(["check-params", "--params", str(PARAMS), "--profile", str(path)]) == 2
    assert "error: bad params: image.network.heads: must be positive" in capsys.readouterr().err


def test_scheduled_runs_keep_the_profile(tmp_path):
    """`diffusion deploy|serve --profile NAME`: both deployments pass the profile to their flow,
    which lays it over the params file each time a scheduled run loads it."""
    from flows.entry import deploy

    deployments = deploy.build(str(PARAMS), profile="cifar10-ddpm")
    assert [d.parameters.get("profile") for d in deployments] == ["cifar10-ddpm"] * len(deploy.SCHEDULES)
    assert all("profile" not in d.parameters for d in deploy.build(str(PARAMS)))
    args = cli._parser().parse_args(["serve", "--params", str(PARAMS), "--profile", "celeba64-ddim"])
    assert args.profile == "celeba64-ddim"
    mine = tmp_path / "mine.yaml"
    mine.write_text("image: {network: {blocks: 1}}\n")
    assert load_params(PARAMS, str(mine)).image.network.blocks == 1  # what the flows call
