"""Quality for the same compute: each framework's paper and improved recipe (params.yaml's
sections) trained for the same wall-clock budget on digits, beside a diffusers DDPM baseline,
all in one run; FD / floor of the same seeded samples at 10, 20 and 50 NFE.

- The project's runs train in-process with the pipeline's loop (benchmarks/digits_fd.py) and
  are sampled by DPM-Solver++(2M), the few-step sampler every framework's model takes.
- The baseline is diffusers' own stack: `UNet2DModel` with the project's parameter count
  (±10%), `DDPMScheduler` (beta = linspace(1e-4, 0.02, 1000)), MSE on eps, AdamW, a cosine
  learning rate after a warm-up, `EMAModel` with warm-up (power 3/4): its train_unconditional
  example, at the project's learning rate and batch (the example's 1e-4 and 500 warm-up steps
  suit runs of 100k steps, not 1,000). It trains for the steps the ddpm paper recipe reached
  in its budget (the same steps: an independent check of that implementation; the baseline
  gets the slightly longer wall time its slower network needs) and is sampled by diffusers'
  DDIMScheduler and DPMSolverMultistepScheduler; its figure at an NFE is the better of the two.
  `--baseline-lr constant` trains it with the paper recipe's constant learning rate instead,
  so that ddpm-paper and the baseline share the schedule and differ in code, AdamW's settings
  and the EMA's form.
- The implementation check samples ddpm-paper's model by the baseline's own diffusers
  schedulers too (its eps read at diffusers' timesteps), so that the two differ in training
  alone; the samplers are compared in benchmarks/few_step_samplers.py.

Targets: ddpm-paper within the estimator's error of the baseline; the best improved recipe at
most 0.75x the baseline's FD / floor at every NFE. With 6,000 samples the standard error is 0.06-0.12.

    .venv/bin/python benchmarks/same_compute.py [--seconds 120] [--samples 6000] [--nfe 10 20 50]
        [--runs ddpm-paper ddpm-edm ...] [--baseline-lr cosine|constant]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.digits_fd import DigitsFD, train_for  # noqa: E402
from benchmarks.network_throughput import diffusers_unet, parameters  # noqa: E402
from diffusion_core.frameworks import DiffusionModel  # noqa: E402
from diffusion_core.noise import PerSampleNoise  # noqa: E402
from diffusion_core.training.lr_schedule import warmup_steps  # noqa: E402
from flows.config.params import parse_params  # noqa: E402
from flows.stages.train import model_config  # noqa: E402

RUNS = ["ddpm-paper", "ddpm-edm", "ncsn-paper", "ncsn-edm", "sde-paper", "sde-edm"]
SHAPE, CHUNK, SEED0 = (1, 8, 8), 2000, 7_000_003
BASELINE = "diffusers DDPM"
PAPER_SAME_SAMPLERS = "ddpm-paper, diffusers' samplers"


def noise_of(first: int, count: int) -> PerSampleNoise:
    return PerSampleNoise(range(SEED0 + first, SEED0 + first + count))


def project_run(params, run: str, digits: DigitsFD, seconds: float, seed: int,
                step_cap: int) -> tuple[DiffusionModel, int]:
    """The run's model trained for `seconds` (or step_cap steps) with its recipe's learning-rate
    schedule."""
    torch.manual_seed(seed)
    model = DiffusionModel(model_config(params, run, {"kind": "image", "shape": list(SHAPE)}))
    schedule = params.framework(run).lr_schedule or params.train.lr_schedule
    return model, train_for(model, digits.x_train, seconds, schedule, seed, step_cap)


def in_chunks(n: int, draw) -> torch.Tensor:
    """n samples as draw(first, count) gives them, CHUNK at a time (bounded memory)."""
    return torch.cat([draw(first, min(CHUNK, n - first)) for first in range(0, n, CHUNK)])


def project_samples(model: DiffusionModel, n: int, nfe: int, sampler: dict | None = None) -> torch.Tensor:
    """n samples of the model by `sampler`'s settings (DPM-Solver++(2M)'s defaults) at `nfe` steps."""
    settings = {**(sampler or {"name": "dpmpp_2m"}), "steps": nfe}
    return in_chunks(n, lambda first, count: model.sample(count, SHAPE, settings, noise_of(first, count), clip=1.0)[0])


def linear_chain_scheduler():
    """diffusers' DDPMScheduler on ddpm-paper's chain (beta = linspace(1e-4, 0.02, 1000))."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")


def diffusers_baseline(target_params: int, digits: DigitsFD, steps: int, lr: float, seed: int,
                       lr_schedule: str = "cosine"):
    """(UNet2DModel with the EMA weights, its DDPMScheduler), trained `steps` steps with
    diffusers' `lr_schedule` after its warm-up ("cosine": the example's; "constant": the
    paper recipe's, for a check of that recipe alone)."""
    import torch.nn.functional as F
    from diffusers.optimization import get_scheduler
    from diffusers.training_utils import EMAModel

    torch.manual_seed(seed)
    unet, _ = diffusers_unet(SHAPE[1], target_params)
    scheduler = linear_chain_scheduler()
    optimizer = torch.optim.AdamW(unet.parameters(), lr=lr, betas=(0.95, 0.999), weight_decay=1e-6, eps=1e-8)
    lr_schedule = get_scheduler(f"{lr_schedule}_with_warmup" if lr_schedule == "constant" else lr_schedule,
                                optimizer, num_warmup_steps=warmup_steps(steps), num_training_steps=steps)
    ema = EMAModel(unet.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x0 = digits.x_train[torch.randint(0, len(digits.x_train), (128,), generator=generator)]
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.randint(0, 1000, (len(x0),), generator=generator)
        loss = F.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        lr_schedule.step()
        ema.step(unet.parameters())
    ema.copy_to(unet.parameters())
    return unet.eval(), scheduler


def unet_eps(unet):
    """diffusers' U-Net as eps(x_t, t)."""
    return lambda x, t: unet(x, t).sample


def project_eps(model: DiffusionModel, train_scheduler):
    """A project VP model as diffusers' eps(x_t, t): t in {0..999} is the chain's step t + 1,
    whose alpha_bar the DDPMScheduler shares (beta = linspace(1e-4, 0.02))."""
    alphas_cumprod = train_scheduler.alphas_cumprod

    def eps(x, t):
        abar = alphas_cumprod[int(t)].float().expand(len(x))
        return model.denoiser(x, abar.sqrt(), (1 - abar).sqrt()).eps
    return eps


@torch.no_grad()
def diffusers_samples(eps, train_scheduler, kind: str, n: int, nfe: int) -> torch.Tensor:
    """n samples of eps(x_t, t) by diffusers' DDIM or DPM-Solver++ scheduler (its defaults,
    made from the training scheduler's config), from the same seeded x_T as the project's runs."""
    from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

    kinds = {"ddim": DDIMScheduler, "dpm_solver": DPMSolverMultistepScheduler}

    def draw(first: int, count: int) -> torch.Tensor:
        scheduler = kinds[kind].from_config(train_scheduler.config)
        scheduler.set_timesteps(nfe)
        x = noise_of(first, count).normal((count, *SHAPE))
        for t in scheduler.timesteps:
            x = scheduler.step(eps(x, t), t, x).prev_sample
        return x.clamp(-1, 1)

    return in_chunks(n, draw)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120.0, help="each run's training budget")
    parser.add_argument("--samples", type=int, default=6000)
    parser.add_argument("--nfe", type=int, nargs="+", default=[10, 20, 50])
    parser.add_argument("--runs", nargs="+", default=RUNS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--step-cap", type=int, default=10**9, help="a cap on top of the budget (tests)")
    parser.add_argument("--baseline-lr", choices=["cosine", "constant"], default="cosine",
                        help="the baseline's learning-rate schedule (constant: the ddpm paper recipe's)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    params = parse_params(yaml.safe_load((ROOT / "params.yaml").read_text()))
    digits, rows, models = DigitsFD.build(), {}, {}
    print(f"digits, {args.seconds:g} s of training per run, {args.samples} samples; FD / floor ± "
          f"its standard error ({digits.describe()})", flush=True)
    for run in args.runs:
        model, steps = project_run(params, run, digits, args.seconds, args.seed, args.step_cap)
        rows[run] = {"steps": steps, "params": parameters(model.denoiser.net), "seconds": args.seconds,
                     "fd": {nfe: digits.ratio(project_samples(model, args.samples, nfe)) for nfe in args.nfe}}
        models[run] = model
        _print(run, rows[run])
    steps = rows.get("ddpm-paper", next(iter(rows.values())))["steps"]
    began = time.perf_counter()
    unet, scheduler = diffusers_baseline(rows[args.runs[0]]["params"], digits, steps, params.image.lr, args.seed,
                                         args.baseline_lr)
    rows[BASELINE] = {"steps": steps, "params": parameters(unet), "seconds": time.perf_counter() - began,
                      **diffusers_sampled(unet_eps(unet), scheduler, digits, args.samples, args.nfe)}
    _print(BASELINE, rows[BASELINE])
    if "ddpm-paper" in models:  # the implementation check: the same samplers as the baseline
        rows[PAPER_SAME_SAMPLERS] = {**rows["ddpm-paper"], **diffusers_sampled(
            project_eps(models["ddpm-paper"], scheduler), scheduler, digits, args.samples, args.nfe)}
        _print(PAPER_SAME_SAMPLERS, rows[PAPER_SAME_SAMPLERS])
    return {"floor": digits.floor, "reference_split": digits.reference_split, "rows": rows, "verdict": verdict(rows, args.nfe)}


def diffusers_sampled(eps, scheduler, digits: DigitsFD, n: int, nfes: list[int]) -> dict:
    """FD / floor of eps's samples by diffusers' DDIM and DPM-Solver++ ("by"), and per NFE the
    better of the two ("fd")."""
    by = {kind: {nfe: digits.ratio(diffusers_samples(eps, scheduler, kind, n, nfe)) for nfe in nfes}
          for kind in ("ddim", "dpm_solver")}
    return {"fd": {nfe: min(by["ddim"][nfe], by["dpm_solver"][nfe]) for nfe in nfes}, "by": by}


def verdict(rows: dict, nfes: list[int]) -> dict:
    """Per NFE: ddpm-paper's gap to the baseline in standard errors, both drawn by diffusers'
    samplers (so that the gap is the training's alone), and the best improved recipe's FD /
    floor over the baseline's."""
    base, out = rows[BASELINE]["fd"], {}
    improved = [run for run in rows if run.endswith("-edm")]
    for nfe in nfes:
        row = {}
        if PAPER_SAME_SAMPLERS in rows:
            (a, ea), (b, eb) = rows[PAPER_SAME_SAMPLERS]["fd"][nfe], base[nfe]
            row["paper_gap_in_errors"] = (a - b) / (ea**2 + eb**2) ** 0.5
        if improved:
            best = min(improved, key=lambda run: rows[run]["fd"][nfe][0])
            row["best_improved"], row["best_over_baseline"] = best, rows[best]["fd"][nfe][0] / base[nfe][0]
        out[nfe] = row
        print(f"NFE {nfe}: " + ", ".join(f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in row.items()), flush=True)
    return out


def _figures(fd: dict) -> str:
    return ", ".join(f"NFE {nfe} {m:.2f} ± {e:.2f}" for nfe, (m, e) in fd.items())


def _print(name: str, row: dict) -> None:
    print(f"  {name:>15}: {row['steps']:5d} steps, {row['params'] / 1e6:.2f}M parameters: {_figures(row['fd'])}",
          flush=True)
    for kind, figures in row.get("by", {}).items():
        print(f"  {kind:>15}: {_figures(figures)}", flush=True)


if __name__ == "__main__":
    main()
