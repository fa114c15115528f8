"""Training steps per second of the project's U-Net against diffusers' UNet2DModel of the same
parameter count (within 10%), same batch, threads and optimiser, at 8x8 and 16x16; and the
fraction of this machine's fp32 matmul peak each reaches, measured in the same run. Both networks
run in both memory orders (contiguous, and channels-last as the pipeline trains); each order's
ratio has both networks in it.

A training step is forward, MSE loss, backward and an Adam step. Each figure is the median of
`--repeats` timings of `--steps` steps after a warm-up, with the spread (min-max) beside it.
diffusers is a benchmark-only dependency: pip install -e ".[bench]".

    .venv/bin/python benchmarks/network_throughput.py [--sizes 8 16] [--batch 128] [--steps 30]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from diffusion_core.models.networks import UNet  # noqa: E402
from diffusion_core.training.precision import as_channels_last  # noqa: E402

PROJECT = dict(base=32, mults=(1, 2), blocks=1, emb_dim=64)  # params.yaml's image network
LAYOUTS = ("contiguous", "channels_last")  # the pipeline trains in channels-last (train.channels_last)


def matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """This machine's fp32 matmul rate (FLOP/s): the best of `repeats` timed n x n products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = min(_timed(lambda: a @ b, 10) for _ in range(repeats)) / 10
    return 2 * n**3 / best


def _timed(fn, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        fn()
    return time.perf_counter() - start


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
    optimizer = torch.optim.Adam(net.parameters(), lr=1e-4)
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


def measure(step, steps: int, repeats: int) -> dict:
    step()  # warm-up
    rates = [steps / _timed(step, steps) for _ in range(repeats)]
    return {"steps_per_s": statistics.median(rates), "min": min(rates), "max": max(rates)}


def compare_at(size: int, batch: int, steps: int, repeats: int, peak: float) -> dict:
    """Both networks in both memory orders; the ratio at each order (both networks in it)."""
    ours = UNet(channels=1, image_size=size, **PROJECT)
    theirs, width = diffusers_unet(size, parameters(ours))
    runs = {"project": (ours, lambda n, x, t: n(x, t)),
            "diffusers": (theirs, lambda n, x, t: n(x, t * 999).sample)}
    out = {"size": size, "batch": batch, "diffusers_widths": width}
    for layout in LAYOUTS:
        row = out[layout] = {}
        for name, (net, call) in runs.items():
            step = _step_fn(net, call, batch, size, layout == "channels_last")
            figure = measure(step, steps, repeats)
            figure.update(params=parameters(net), flops_per_step=_flops(step))
            figure["peak_fraction"] = figure["flops_per_step"] * figure["steps_per_s"] / peak
            row[name] = figure
        row["ratio"] = row["project"]["steps_per_s"] / row["diffusers"]["steps_per_s"]
    return out


def report(result: dict) -> str:
    lines = []
    for layout in LAYOUTS:
        row = result[layout]
        p, d = row["project"], row["diffusers"]
        lines.append(f"{result['size']}x{result['size']}, batch {result['batch']}, {layout}: project "
                     f"{p['steps_per_s']:.2f} steps/s ({p['min']:.2f}-{p['max']:.2f}, {p['params'] / 1e6:.2f}M "
                     f"params, {100 * p['peak_fraction']:.1f}% of peak) | diffusers {d['steps_per_s']:.2f} "
                     f"({d['min']:.2f}-{d['max']:.2f}, {d['params'] / 1e6:.2f}M, widths {result['diffusers_widths']}, "
                     f"{100 * d['peak_fraction']:.1f}% of peak) | ratio {row['ratio']:.2f}x")
    return "\n".join(lines)


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=3)
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
