"""What the digits benchmarks share: the pipeline's data split, the evaluate stage's FD /
floor (the in-domain classifier's features, trained on the classifier split alone; the mean FD
of random subsets of the samples against the reference split, the size of that split, over the
mean of 64 train subsets; ± the standard error over the disjoint draws) and an in-process
training loop with a wall-clock budget (no Ray), so that runs differ only in what they name.

The reference is the val split: these benchmarks choose settings (samplers' grids, recipes,
widths), and settings are tuned on val, never on the test split that the report scores."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import yaml

from diffusion_core.data import sources
from diffusion_core.evaluation.fd_estimators import fd_chunks_sem, fd_draws
from diffusion_core.features import classifier as clf
from diffusion_core.training.ema import EMA
from diffusion_core.training.lr_schedule import StepBudget, lr_factor, warmup_steps
from diffusion_core.training.step import adam, training_step

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"
REFERENCE_SPLIT = "val"  # the tuning split


@dataclass
class DigitsFD:
    x_train: torch.Tensor
    classifier: torch.nn.Module
    test_features: np.ndarray  # the reference split's (val's) features
    floor: float
    draw: int  # the reference split's size: FD is measured on subsets of this many
    reference_split: str = REFERENCE_SPLIT

    @classmethod
    def build(cls, reference_split: str = REFERENCE_SPLIT) -> DigitsFD:
        """The pipeline's split (params.yaml's data: seed and sizes, so 697 train / 300 val /
        300 classifier / 500 test by default) and classifier (its epochs and seed, on the
        classifier split), and the floor: FD of train subsets against the reference split."""
        from flows.config.params import parse_params

        params = parse_params(yaml.safe_load(PARAMS.read_text()))
        x, y = sources.load_source("digits", 0, params.data.seed)
        held_out = params.data.held_out_sizes(labelled_images=True)
        splits = sources.held_out_split(x, y, held_out, params.data.seed)
        classifier = clf.train_classifier(*splits["classifier"], epochs=params.classifier.epochs,
                                          seed=params.classifier.seed)
        x_train, reference = splits["train"][0], splits[reference_split][0]
        train_features = clf.extract_features(classifier, x_train)
        reference_features = clf.extract_features(classifier, reference)
        floor = float(np.mean(fd_draws(train_features, reference_features, len(reference), seed=0)))
        return cls(torch.from_numpy(x_train), classifier, reference_features, floor, len(reference),
                   reference_split)

    def ratio(self, samples: torch.Tensor) -> tuple[float, float]:
        """FD / floor of the samples and its standard error (NaN below two disjoint draws)."""
        features = clf.extract_features(self.classifier, samples.numpy())
        fd = float(np.mean(fd_draws(features, self.test_features, self.draw, seed=1)))
        sem = fd_chunks_sem(features, self.test_features, self.draw)
        return fd / self.floor, (float("nan") if sem is None else sem / self.floor)

    def describe(self) -> str:
        """Which images the figures are measured against, for the benchmarks' first line."""
        return f"reference: the {self.reference_split} split ({self.draw} images), floor {self.floor:.2f}"


def train_for(model, x_train: torch.Tensor, seconds: float, schedule: str, seed: int,
              step_cap: int, lr: float = 1e-3, batch: int = 128) -> int:
    """The pipeline's loop (Adam, batch 128, gradient clipping 1, power EMA with gamma 7, the
    learning rate warmed up over 2% of the planned steps and decayed to where the time budget
    will end at the pace so far) until the budget or `step_cap` steps; loads the EMA weights
    into the model, returns the steps taken. The plan is first made at step 20, so a budget
    without a step cap does not warm up towards the cap."""
    torch.manual_seed(seed)
    net, generator = model.denoiser.net, torch.Generator().manual_seed(seed)
    optimizer, ema = adam(net.parameters(), lr), EMA(net, 7.0)
    start, step, budget = time.perf_counter(), 0, StepBudget(step_cap)
    while step < step_cap:
        x = x_train[torch.randint(0, len(x_train), (batch,), generator=generator)]
        rate = lr * lr_factor(step, budget.planned, warmup_steps(budget.planned), schedule)
        training_step(model, model.denoiser, optimizer, ema, x, generator, rate, grad_clip=1.0)
        step += 1
        if (step == 20 or step % 100 == 0) and budget.check(step, (time.perf_counter() - start) / seconds):
            break
    net.load_state_dict(ema.model.state_dict())
    return step
