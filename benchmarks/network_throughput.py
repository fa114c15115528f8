"""Training steps per second of the project's U-Net against diffusers' UNet2DModel of the same
parameter count (within 10%), same batch, threads and optimiser, at 8x8 and 16x16; and the
fraction of this machine's fp32 matmul peak each reaches, measured in the same run. Both networks
run in both memory orders (contiguous, and channels-last as the pipeline trains); each order's
ratio has both networks in it.

A training step is forward, MSE loss, backward and the pipeline's (fused) Adam step. Each repeat
times `--steps` steps of each network back to back; the ratio is the median over `--repeats`
with its range (min-max), the rates the median seconds' steps/s.
diffusers is a benchmark-only dependency: pip install -e ".[bench]".

`--network paper`: the same comparison at 32x32 RGB for DDPM's CIFAR-10 U-Net (the profile
cifar10-ddpm's, 35.7M parameters) against UNet2DModel in the same configuration (widths 128,
256, 256, 256, two blocks per level, attention at 16x16 with one head, dropout 0.1, 32 norm
groups): the two have the same parameter count and FLOPs per step, so the ratio is at equal
work. It also prints the FLOPs per step at the profile's batch (128). `--paper-base` scales the
widths down (the tests' tiny size). `--profile-flops` prints each profile's parameters and
FLOPs per training step (docs/profiles.md), counted on the meta device, and exits.

    .venv/bin/python benchmarks/network_throughput.py [--sizes 8 16] [--batch 128] [--steps 30]
    .venv/bin/python benchmarks/network_throughput.py --network paper [--batch 4] [--steps 2]
    .venv/bin/python benchmarks/network_throughput.py --profile-flops
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import paired_ratios, seconds  # noqa: E402
from diffusion_core.models.networks import UNet, build_network  # noqa: E402
from diffusion_core.training.precision import as_channels_last  # noqa: E402
from diffusion_core.training.step import adam  # noqa: E402

PROJECT = dict(base=32, mults=(1, 2), blocks=1, emb_dim=64)  # params.yaml's image network
LAYOUTS = ("contiguous", "channels_last")  # the pipeline trains in channels-last (train.channels_last)
ROOT = Path(__file__).resolve().parents[1]
PROFILE_SHAPES = {"cifar10-ddpm": (3, 32, 32), "celeba64-ddim": (3, 64, 64)}  # their data's C, H, W
PAPER_MULTS, PAPER_ATTENTION = (1, 2, 2, 2), 1  # DDPM's CIFAR-10 widths and its 16x16 attention level
DEFAULTS = {"small": {"batch": 128, "steps": 30}, "paper": {"batch": 4, "steps": 2}}  # paper: a short CPU run


def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (FLOP/s): the best of `repeats` timed n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(seconds(lambda: [a @ b for _ in range(10)]) for _ in range(repeats)) / 10
    return 2 * n**3 / best


def parameters(net: torch.nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def diffusers_unet(size: int, target_params: int):
    """diffusers' UNet2DModel with two levels (attention at the coarse one, like ours), its two
    widths chosen so its parameter count is closest to `target_params`."""
    from diffusers import UNet2DModel

    def build(widths: tuple):
        return UNet2DModel(sample_size=size, in_channels=1, out_channels=1, layers_per_block=1,
                           block_out_channels=widths, norm_num_groups=8,
                           down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                           up_block_types=("AttnUpBlock2D", "UpBlock2D"))

    pairs = [(a, b) for a in range(8, 97, 8) for b in range(a, 2 * a + 1, 8)]
    widths = min(pairs, key=lambda w: abs(parameters(build(w)) - target_params))
    net = build(widths)
    if abs(parameters(net) / target_params - 1) > 0.1:
        raise ValueError(f"no diffusers U-Net within 10% of {target_params} parameters")
    return net, widths


def profile_model(name: str) -> tuple:
    """(merged params, model config) of profile `name`'s first run, as the train stage makes
    the config (flows/stages/train.py:model_config) for the profile's data shape."""
    from flows.config.loader import read_params
    from flows.config.params import parse_params
    from flows.stages.train import model_config

    params = parse_params(read_params(ROOT / "params.yaml", name))
    meta = {"kind": "image", "shape": list(PROFILE_SHAPES[name])}
    return params, model_config(params, params.train.frameworks[0], meta)


def _project_call(net, x, t):
    return net(x, t)


def _diffusers_call(net, x, t):
    return net(x, t * 999).sample


def train_step_flops(make_net, shape: tuple, batch: int, call=_project_call) -> int:
    """FLOPs of one training step's forward and backward (an MSE loss on the output) at `batch`,
    counted by FlopCounterMode on the meta device: shapes only, no arithmetic, so a paper-size
    network counts at its full batch in a second. Adam's elementwise update is not counted
    (FlopCounterMode counts matrix products and convolutions)."""
    with torch.device("meta"):
        net = make_net()
        x, target, t = torch.randn(batch, *shape), torch.randn(batch, *shape), torch.rand(batch)
    with FlopCounterMode(display=False) as counter:
        ((call(net, x, t) - target) ** 2).mean().backward()
    return counter.get_total_flops()


def diffusers_paper_unet(base: int = 128, size: int = 32):
    """diffusers' UNet2DModel in DDPM's CIFAR-10 configuration (widths base x (1, 2, 2, 2), two
    blocks per level, attention at the second level and in the middle with one head, dropout
    0.1, 32 norm groups); its default 4 x base timestep MLP is DDPM's."""
    from diffusers import UNet2DModel

    widths = tuple(base * m for m in PAPER_MULTS)
    down = ["DownBlock2D"] * len(widths)
    down[PAPER_ATTENTION] = "AttnDownBlock2D"
    return UNet2DModel(sample_size=size, in_channels=3, out_channels=3, layers_per_block=2,
                       block_out_channels=widths, down_block_types=tuple(down),
                       up_block_types=tuple(b.replace("Down", "Up") for b in reversed(down)),
                       dropout=0.1, norm_num_groups=32, attention_head_dim=widths[PAPER_ATTENTION])


def paper_networks(base: int) -> dict:
    """Both networks of `--network paper`: the profile cifar10-ddpm's U-Net (its widths and
    embedding scaled to `base`, as DDPM's are to 128) and diffusers' in the same configuration."""
    network = dict(profile_model("cifar10-ddpm")[1]["network"], base=base, emb_in=base, emb_dim=4 * base)
    return {"project": lambda: build_network(network), "diffusers": lambda: diffusers_paper_unet(base)}


def _step_fn(net, call, batch: int, shape: tuple, channels_last: bool):
    """One training step of `net` (forward via `call`, MSE, backward, Adam) on fixed data, the
    weights and batch in channels-last memory order if asked (the pipeline's default)."""
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = adam(net.parameters(), 1e-4)  # the pipeline's, for both networks
    x, target = torch.randn(batch, *shape), torch.randn(batch, *shape)
    x = as_channels_last(x, channels_last)
    t = torch.rand(batch)

    def step():
        optimizer.zero_grad(set_to_none=True)
        loss = ((call(net, x, t) - target) ** 2).mean()
        loss.backward()
        optimizer.step()
    return step


def _flops(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


CALLS = {"project": _project_call, "diffusers": _diffusers_call}


def _compare(nets: dict, shape: tuple, batch: int, steps: int, repeats: int, peak: float, out: dict) -> dict:
    """Both networks in both memory orders. Per order, each repeat times `steps` steps of one
    network and then of the other (benchmarks/timing.py), so a drift of the machine's speed
    moves both alike; the ratio is the project's steps/s over diffusers', median (range)."""
    for layout in LAYOUTS:
        step = {name: _step_fn(net, CALLS[name], batch, shape, layout == "channels_last")
                for name, net in nets.items()}
        for fn in step.values():
            fn()  # warm-up
        block = {name: (lambda fn=fn: [fn() for _ in range(steps)]) for name, fn in step.items()}
        paired = paired_ratios(block["diffusers"], block["project"], repeats)
        row = out[layout] = {key: paired[key] for key in ("ratio", "ratio_min", "ratio_max")}
        for name, seconds in (("project", paired["reference_seconds"]), ("diffusers", paired["seconds"])):
            figure = {"steps_per_s": steps / seconds, "params": parameters(nets[name]),
                      "flops_per_step": _flops(step[name])}
            figure["peak_fraction"] = figure["flops_per_step"] * figure["steps_per_s"] / peak
            row[name] = figure
    return out


def compare_at(size: int, batch: int, steps: int, repeats: int, peak: float) -> dict:
    """The project's digits-size U-Net against diffusers' of about its parameter count."""
    nets = {"project": UNet(channels=1, image_size=size, **PROJECT)}
    nets["diffusers"], width = diffusers_unet(size, parameters(nets["project"]))
    out = {"size": size, "batch": batch, "diffusers_widths": width}
    return _compare(nets, (1, size, size), batch, steps, repeats, peak, out)


def compare_paper(base: int, batch: int, steps: int, repeats: int, peak: float) -> dict:
    """DDPM's CIFAR-10 U-Net, the project's and diffusers', and the FLOPs of a step of each at
    the profile's batch (128)."""
    makers, shape = paper_networks(base), PROFILE_SHAPES["cifar10-ddpm"]
    nets = {name: make() for name, make in makers.items()}
    out = {"size": shape[1], "batch": batch, "diffusers_widths": nets["diffusers"].config.block_out_channels,
           "profile_batch_flops": {name: train_step_flops(make, shape, 128, CALLS[name])
                                   for name, make in makers.items()}}
    return _compare(nets, shape, batch, steps, repeats, peak, out)


def report(result: dict) -> str:
    lines = []
    for layout in LAYOUTS:
        row = result[layout]
        p, d = row["project"], row["diffusers"]
        lines.append(f"{result['size']}x{result['size']}, batch {result['batch']}, {layout}: project "
                     f"{p['steps_per_s']:.2f} steps/s ({p['params'] / 1e6:.2f}M params, "
                     f"{p['flops_per_step'] / 1e9:.2f} GFLOP/step, {100 * p['peak_fraction']:.1f}% of peak) "
                     f"| diffusers {d['steps_per_s']:.2f} ({d['params'] / 1e6:.2f}M, widths "
                     f"{result['diffusers_widths']}, {d['flops_per_step'] / 1e9:.2f} GFLOP/step, "
                     f"{100 * d['peak_fraction']:.1f}% of peak) | ratio {row['ratio']:.2f}x "
                     f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})")
    if "profile_batch_flops" in result:
        lines.append("at the profile's batch 128: " + ", ".join(
            f"{name} {flops / 1e12:.3f} TFLOP/step" for name, flops in result["profile_batch_flops"].items()))
    return "\n".join(lines)


def profile_flops() -> list[dict]:
    """Each profile's network: parameters and FLOPs of a training step at its batch."""
    rows = []
    for name, shape in PROFILE_SHAPES.items():
        params, config = profile_model(name)
        choices = params.training(params.train.frameworks[0], "image")
        make = lambda config=config: build_network(config["network"])  # noqa: E731
        rows.append({"profile": name, "params": parameters(make()), "batch": choices.batch_size,
                     "steps": params.image.steps,
                     "flops_per_step": train_step_flops(make, shape, choices.batch_size)})
        print(f"{name}: {rows[-1]['params']:,} params, {rows[-1]['flops_per_step'] / 1e12:.3f} TFLOP per "
              f"training step at batch {choices.batch_size}, {params.image.steps:,} steps")
    return rows


def _arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--network", choices=tuple(DEFAULTS), default="small")
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16], help="small only")
    parser.add_argument("--paper-base", type=int, default=128, help="paper only: the widths' base")
    parser.add_argument("--batch", type=int, help="default: 128 small, 4 paper")
    parser.add_argument("--steps", type=int, help="per repeat; default: 30 small, 2 paper")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--profile-flops", action="store_true", help="print each profile's FLOPs per step, exit")
    args = parser.parse_args(argv)
    for key, value in DEFAULTS[args.network].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def main(argv=None) -> list[dict]:
    args = _arguments(argv)
    if args.profile_flops:
        return profile_flops()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak_flops()
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, {args.threads} threads")
    if args.network == "paper":
        results = [compare_paper(args.paper_base, args.batch, args.steps, args.repeats, peak)]
    else:
        results = [compare_at(size, args.batch, args.steps, args.repeats, peak) for size in args.sizes]
    for result in results:
        print(report(result))
    return results


if __name__ == "__main__":
    main()
