"""Each recipe's paper, in one place: the paper's value of every setting a recipe can set
(recipes.recipe_settings), where in the paper it is stated, and why this platform's recipe
differs where it does. `diffusion recipes` (deviations.py) prints every recipe in use beside
these values, from the params, so the table cannot drift from what ran.

Values are written in the platform's terms (a DDPM beta_1 = 1e-4 at N = 1000 is beta_min 0.1).
A value the paper states in training steps (a warm-up) or as a per-step EMA rate scales with the
run's length: the platform keeps the paper's fraction of its training (`scale="steps"`: n steps
of the paper's S are n x steps / S here; `scale="rate"`: an EMA rate r averages the last
~1 / (1 - r) steps, the same fraction of a shorter run is 1 - (1 - r) x S / steps). What carries
over between run lengths is the average's length relative to the run (Karras et al., 2024,
section 3.1), and a warm-up as long as the paper's would outlast a 1,200-step run four times.
"""
from __future__ import annotations

from dataclasses import dataclass, field

STEP_SCALING = ("kept at the paper's fraction of its training: a warm-up of n of the paper's S steps "
                "is n x steps / S here, an EMA rate r becomes 1 - (1 - r) x S / steps")


@dataclass(frozen=True)
class Value:
    """The paper's value of one setting, where the paper gives it, and how it scales."""

    value: object
    where: str
    scale: str | None = None  # None | "steps" (a step count) | "rate" (an EMA's per-step decay)
    text: str | None = None  # the paper's own words, where the value needs them


@dataclass(frozen=True)
class Paper:
    cite: str
    steps: int  # the training steps of the paper's run these values come from
    values: dict
    reasons: dict = field(default_factory=dict)  # setting -> why the recipe differs from the paper
    notes: tuple = ()  # what a paper does that is no setting here, and what the recipe does instead


def scaled(value: Value, paper_steps: int, steps: int):
    """The paper's value at a run of `steps` steps (see the module's docstring), or None if it
    does not scale."""
    if value.scale == "steps":
        return max(1, round(value.value * steps / paper_steps)) if value.value else 0
    if value.scale == "rate":
        settings = dict(value.value)
        settings["rate"] = round(max(0.0, 1 - (1 - settings["rate"]) * paper_steps / steps), 4)
        return settings
    return None


_SMALL_NET = ("the digits U-Net of every run (image.network): the paper's is ~100x larger, and the "
              "default pipeline has 15 min on two CPU cores; 8x8 images have two resolutions, not four")
_NO_ATTENTION = ("attention in the middle (4x4) only: more would enlarge the network the pipeline's "
                 "time budget is set for")

DDPM = Paper(
    cite="Ho, Jain & Abbeel 2020, Denoising Diffusion Probabilistic Models (CIFAR10 run)",
    steps=800_000,
    values={
        "schedule": Value("linear", "sec. 4"), "beta_min": Value(0.1, "sec. 4", text="beta_1 = 1e-4 x N"),
        "beta_max": Value(20.0, "sec. 4", text="beta_T = 0.02 x N"), "N": Value(1000, "sec. 4"),
        "parameterization": Value("eps", "sec. 3.2, eq. 12"), "noise": Value("uniform", "alg. 1"),
        "weighting": Value("network", "eq. 14, L_simple"),
        "sampler": Value({"name": "ancestral"}, "alg. 2", text="ancestral, 1000 steps"),
        "network.base": Value(128, "app. B"), "network.mults": Value([1, 2, 2, 2], "app. B"),
        "network.blocks": Value(2, "app. B"), "network.emb_dim": Value(512, "their code: 4 x base"),
        "network.dropout": Value(0.1, "app. B"), "network.attention": Value([1], "app. B", text="16x16"),
        "conditioning": Value("ddpm", "sec. 4, app. B", text="x_t and t, Transformer sinusoids"),
        "ema": Value({"kind": "exponential", "rate": 0.9999}, "app. B", "rate"),
        "optimizer.lr": Value(2e-4, "app. B"), "optimizer.warmup_steps": Value(5000, "app. B", "steps"),
        "optimizer.lr_schedule": Value("constant", "app. B"), "optimizer.grad_clip": Value(1.0, "their code"),
        "batch_size": Value(128, "app. B"),
    },
    reasons={
        "sampler": "DDIM at 50 steps (Song et al. 2021a) on the same chain: ancestral's 1,000 network "
                   "calls per sample would cost 20x the default pipeline's sampling; `{name: ancestral}` "
                   "draws the paper's",
        "network.base": _SMALL_NET, "network.mults": _SMALL_NET, "network.blocks": _SMALL_NET,
        "network.emb_dim": _SMALL_NET, "network.attention": _NO_ATTENTION,
    },
    notes=("Random horizontal flips (CIFAR10): none, a flipped digit is another glyph.",),
)

NCSN_V2 = Paper(
    cite="Song & Ermon 2020, Improved Techniques for Training Score-Based Generative Models "
         "(NCSNv2; CIFAR10 run)",
    steps=300_000,
    values={
        "sigma_min": Value(0.01, "app. B, sigma_L"),
        "sigma_max": Value(9.63, "technique 1", text="the largest distance between training points: 9.63 on digits"),
        "num_scales": Value(24, "technique 2", text="gamma at D = 64 gives 24 levels from 10 to 0.01 (232 on CIFAR10)"),
        "model": Value("score", "sec. 2"), "objective": Value("dsm", "eq. 2, lambda = sigma^2"),
        "parameterization": Value("eps", "technique 3", text="s = F(x) / sigma"),
        "sampler": Value({"name": "annealed_langevin", "steps_per_sigma": 5, "eps": 2.5e-5, "denoise": True},
                         "technique 4, alg. 1", text="T = 5; eps from technique 4's rule; a final denoising step"),
        "network.base": Value(128, "app. B", text="RefineNet, ngf = 128"),
        "network.dropout": Value(0.0, "app. B"), "network.attention": Value([], "app. B"),
        "conditioning": Value("ncsnv2", "technique 3", text="unconditional network on x"),
        "ema": Value({"kind": "exponential", "rate": 0.999}, "technique 5", "rate"),
        "optimizer.lr": Value(1e-4, "app. B"), "optimizer.warmup_steps": Value(0, "app. B"),
        "optimizer.lr_schedule": Value("constant", "app. B"), "optimizer.grad_clip": Value(None, "their code"),
        "batch_size": Value(128, "app. B"),
    },
    reasons={
        "sigma_max": "rounded up to 10: the ladder's top must reach the largest distance (the ncsn "
                     "section's value, shared with ncsn-edm)",
        "network.base": _SMALL_NET + "; a U-Net stands for the RefineNet",
    },
    notes=("Technique 4's rule has no root at D = 64 (gamma = 1.35): eps is where its left side comes "
           "closest to 1 (2.5e-5).",),
)

SCORE_SDE = Paper(
    cite="Song, Sohl-Dickstein, Kingma, Kumar, Ermon & Poole 2021, Score-Based Generative Modeling "
         "through Stochastic Differential Equations (VP SDE, DDPM++ cont., CIFAR10 run)",
    steps=1_300_000,
    values={
        "process": Value("vp", "sec. 3.4"), "beta_min": Value(0.1, "eq. 11, app. C"),
        "beta_max": Value(20.0, "eq. 11, app. C"), "N": Value(1000, "app. C"),
        "eps": Value(1e-5, "app. C"), "weighting": Value("sigma2", "eq. 7, lambda = sigma_t^2"),
        "importance": Value(False, "eq. 7, t ~ U(eps, 1)"), "parameterization": Value("eps", "their code: s = -F / sigma_t"),
        "sampler": Value({"name": "ode", "solver": "rk45", "rtol": 1e-5, "atol": 1e-5}, "sec. 4.3, app. D.2",
                         text="probability-flow ODE, RK45, tolerances 1e-5"),
        "network.base": Value(128, "app. H"), "network.mults": Value([1, 2, 2, 2], "app. H"),
        "network.blocks": Value(4, "app. H"), "network.emb_dim": Value(512, "their code: 4 x base"),
        "network.dropout": Value(0.1, "app. H"), "network.attention": Value([1], "app. H", text="16x16"),
        "conditioning": Value("ddpm", "their code", text="x_t and 999 t, DDPM's sinusoids"),
        "ema": Value({"kind": "exponential", "rate": 0.9999}, "app. H", "rate"),
        "optimizer.lr": Value(2e-4, "app. H"), "optimizer.warmup_steps": Value(5000, "app. H", "steps"),
        "optimizer.lr_schedule": Value("constant", "app. H"), "optimizer.grad_clip": Value(1.0, "app. H"),
        "batch_size": Value(128, "app. H"),
    },
    reasons={
        "network.base": _SMALL_NET, "network.mults": _SMALL_NET, "network.blocks": _SMALL_NET,
        "network.emb_dim": _SMALL_NET, "network.attention": _NO_ATTENTION,
    },
    notes=("The paper's other sampler, predictor-corrector (reverse diffusion + Langevin, snr 0.16, "
           "1,000 steps), is `{name: pc}`; the recipe draws with the probability-flow ODE.",
           "conditioning ddpm feeds the chain's fractional index, which differs from the paper's "
           "999 t by under one timestep.",),
)

_EDM_COMMON = {
    "parameterization": Value("edm", "table 1"),
    "conditioning": Value("edm", "table 1", text="c_in(s) x, c_noise = ln(s) / 4"),
    "network.base": Value(128, "table 7, DDPM++"), "network.dropout": Value(0.13, "table 7"),
    "network.attention": Value([1], "table 7", text="16x16"),
    "ema": Value({"kind": "exponential", "rate": 0.99929}, "table 7", "rate",
                 text="half-life 0.5 Mimg at batch 512"),
    "optimizer.lr": Value(1e-3, "table 7"),
    "optimizer.warmup_steps": Value(19531, "table 7", "steps", text="10 Mimg at batch 512"),
    "optimizer.lr_schedule": Value("constant", "table 7"), "optimizer.grad_clip": Value(None, "their code"),
    "batch_size": Value(512, "table 7"),
}
_EDM_REASONS = {
    "network.base": _SMALL_NET, "network.attention": _NO_ATTENTION,
    "network.dropout": "none: the shared digits network (not tuned on digits)",
    "ema": "EDM2's power-function EMA (Karras et al. 2024), gamma 7: its length follows the run's",
    "optimizer.warmup_steps": "2% of the run (train's shared default), not tuned against EDM's 5%",
    "optimizer.lr_schedule": "cosine decay to 0 at the last step: the improved recipe's choice, so "
                             "a run of any length ends at a low rate",
    "optimizer.grad_clip": "clipped at 1 (train.grad_clip) for every run but NCSN's",
    "batch_size": "128 (the profile's): 512 would be 73% of digits' 697 training images per step",
}
EDM_CITE = ("Karras, Aittala, Aila & Laine 2022, Elucidating the Design Space of Diffusion-Based "
            "Generative Models (EDM; CIFAR10 run)")
EDM_STEPS = 390_625  # 200 Mimg at batch 512

PAPERS = {
    "ddpm-paper": DDPM,
    "ncsn-paper": NCSN_V2,
    "sde-paper": SCORE_SDE,
    "ddpm-edm": Paper(EDM_CITE, EDM_STEPS, {
        **_EDM_COMMON, "noise": Value("lognormal", "table 1", text="ln s ~ N(-1.2, 1.2^2)"),
        "weighting": Value("network", "table 1, lambda = 1 / c_out^2"),
        "sampler": Value({"name": "heun", "steps": 35}, "alg. 1, table 1", text="18 levels, 35 NFE, rho 7")},
        _EDM_REASONS),
    "ncsn-edm": Paper(EDM_CITE, EDM_STEPS, {**_EDM_COMMON}, {
        **_EDM_REASONS,
        "ema": _EDM_REASONS["ema"]},
        notes=("ncsn-edm changes only NCSN's preconditioning and decay: its ladder loss and annealed "
               "Langevin sampler stay NCSN's, to see what the preconditioning alone is worth.",)),
    "sde-edm": Paper(EDM_CITE, EDM_STEPS, {
        **_EDM_COMMON, "weighting": Value("lognormal", "table 1", text="ln s ~ N(-1.2, 1.2^2), unit weight"),
        "importance": Value(True, "table 1", text="noise levels drawn from the lognormal")},
        _EDM_REASONS,
        notes=("sde-edm keeps the score-SDE sampler (the section's probability-flow ODE).",)),
}


def paper_of(key: str) -> Paper | None:
    """The paper a run key's recipe ('ddpm-paper', 'sde-edm.s1') follows, if one is recorded."""
    return PAPERS.get(key.partition(".")[0])
