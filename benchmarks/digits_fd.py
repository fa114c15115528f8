"""What the digits benchmarks share: the data split, the evaluate stage's FD / floor (the
in-domain classifier's features; the mean FD of random 500-subsets of the samples against the
500 held-out images, over the mean of 64 train subsets; ± the standard error over the disjoint
500-draws) and an in-process training loop with a wall-clock budget (no Ray), so that runs
differ only in what they name."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from diffusion_core.data import sources
from diffusion_core.evaluation.fd_estimators import fd_chunks_sem, fd_draws
from diffusion_core.features import classifier as clf
from diffusion_core.training.ema import EMA
from diffusion_core.training.lr_schedule import StepBudget, lr_factor, warmup_steps
from diffusion_core.training.step import adam, training_step

DRAW = 500  # the held-out split's size: FD is measured on subsets of this many


@dataclass
class DigitsFD:
    x_train: torch.Tensor
    classifier: torch.nn.Module
    test_features: np.ndarray
    floor: float

    @classmethod
    def build(cls, seed: int = 0) -> DigitsFD:
        """The pipeline's split (500 held out) and classifier (30 epochs), and the floor: FD of
        train subsets against the held-out images."""
        x, y = sources.load_source("digits", seed, 0)
        x_train, y_train, x_test, _ = sources.train_test_split(x, y, DRAW, seed)
        classifier = clf.train_classifier(x_train, y_train, epochs=30, seed=seed)
        train_features = clf.extract_features(classifier, x_train)
        test_features = clf.extract_features(classifier, x_test)
        floor = float(np.mean(fd_draws(train_features, test_features, DRAW, seed=0)))
        return cls(torch.from_numpy(x_train), classifier, test_features, floor)

    def ratio(self, samples: torch.Tensor) -> tuple[float, float]:
        """FD / floor of the samples and its standard error (NaN below two disjoint draws)."""
        features = clf.extract_features(self.classifier, samples.numpy())
        fd = float(np.mean(fd_draws(features, self.test_features, DRAW, seed=1)))
        sem = fd_chunks_sem(features, self.test_features, DRAW)
        return fd / self.floor, (float("nan") if sem is None else sem / self.floor)


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
