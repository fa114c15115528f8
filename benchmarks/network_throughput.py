"""Training steps per second of the project's U-Net against diffusers' UNet2DModel of the same
parameter count (within 10%), same batch, threads and optimiser, at 8x8 and 16x16; and the
fraction of this machine's fp32 matmul peak each reaches, measured in the same run. Both networks
run in both memory orders (contiguous, and channels-last as the pipeline trains); each order's
ratio has both networks in it.

A training step is forward, MSE loss, backward and the pipeline's (fused) Adam step. Each repeat
times `--steps` steps of each network back to back; the ratio is the median over `--repeats`
with its range (min-max), the rates the median seconds' steps/s.
diffusers is a benchmark-only dependency: pip install -e ".[bench]".

    .venv/bin/python benchmarks/network_throughput.py [--sizes 8 16] [--batch 128] [--steps 30]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.timing import paired_ratios, seconds  # noqa: E402
from diffusion_core.models.networks import UNet  # noqa: E402
from diffusion_core.training.precision import as_channels_last  # noqa: E402
from diffusion_core.training.step import adam  # noqa: E402

PROJECT = dict(base=32, mults=(1, 2), blocks=1, emb_dim=64)  # params.yaml's image network
LAYOUTS = ("contiguous", "channels_last")  # the pipeline trains in channels-last (train.channels_last)


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


def _step_fn(net, call, batch: int, size: int, channels_last: bool):
    """One training step of `net` (forward via `call`, MSE, backward, Adam) on fixed data, the
    weights and batch in channels-last memory order if asked (the pipeline's default)."""
    net.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    optimizer = adam(net.parameters(), 1e-4)  # the pipeline's, for both networks
    x, target = torch.randn(batch, 1, size, size), torch.randn(batch, 1, size, size)
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


def compare_at(size: int, batch: int, steps: int, repeats: int, peak: float) -> dict:
    """Both networks in both memory orders. Per order, each repeat times `steps` steps of one
    network and then of the other (benchmarks/timing.py), so a drift of the machine's speed
    moves both alike; the ratio is the project's steps/s over diffusers', median (range)."""
    nets = {"project": UNet(channels=1, image_size=size, **PROJECT)}
    nets["diffusers"], width = diffusers_unet(size, parameters(nets["project"]))
    calls = {"project": lambda n, x, t: n(x, t), "diffusers": lambda n, x, t: n(x, t * 999).sample}
    out = {"size": size, "batch": batch, "diffusers_widths": width}
    for layout in LAYOUTS:
        step = {name: _step_fn(net, calls[name], batch, size, layout == "channels_last") for name, net in nets.items()}
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


def report(result: dict) -> str:
    lines = []
    for layout in LAYOUTS:
        row = result[layout]
        p, d = row["project"], row["diffusers"]
        lines.append(f"{result['size']}x{result['size']}, batch {result['batch']}, {layout}: project "
                     f"{p['steps_per_s']:.2f} steps/s ({p['params'] / 1e6:.2f}M params, "
                     f"{100 * p['peak_fraction']:.1f}% of peak) | diffusers {d['steps_per_s']:.2f} "
                     f"({d['params'] / 1e6:.2f}M, widths {result['diffusers_widths']}, "
                     f"{100 * d['peak_fraction']:.1f}% of peak) | ratio {row['ratio']:.2f}x "
                     f"({row['ratio_min']:.2f}-{row['ratio_max']:.2f})")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    peak = matmul_peak_flops()
    print(f"fp32 matmul peak {peak / 1e9:.1f} GFLOP/s, {args.threads} threads")
    results = [compare_at(size, args.batch, args.steps, args.repeats, peak) for size in args.sizes]
    for result in results:
        print(report(result))
    return results


if __name__ == "__main__":
    main()
