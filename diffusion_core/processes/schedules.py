"""The noise schedules beta(t) of the VP-family processes, in continuous time: the linear one
(VP and sub-VP) and the cosine one, clipped so that it stays finite on [0, T]. Each gives
beta(t), log alpha(t) = -1/2 int_0^t beta, and the time at which the VP marginal reaches a noise
level; the processes in `sde.py` ask them.

The cosine's alpha_bar(t) = cos^2(((t + s)/(1 + s)) pi/2) / cos^2(s/(1 + s) pi/2) (Nichol & Dhariwal, 2021,
eq. 17) has beta(t) = -d log alpha_bar / dt infinite at t = T. `CosineSchedule` follows it up
to a clip time t_c inside an N-step chain's last step, then holds beta at its value there,
beta_c: t_c is solved so that the process loses over that step exactly the log 1000 of the
paper's clipped beta 0.999, so the N-step chain is the paper's with every rung on the
continuous marginal.
"""
from __future__ import annotations

import math

import torch

OFFSET = 0.008  # the paper's s, which keeps beta near t = 0 from vanishing
BETA_CLIP = 0.999  # the paper's largest beta


class LinearSchedule:
    """beta(t) = beta_min + t (beta_max - beta_min) (Song et al., 2021, eq. 11 and 34)."""

    def __init__(self, beta_min: float, beta_max: float):
        self.beta_min, self.beta_max = float(beta_min), float(beta_max)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def integrated_beta(self, t: torch.Tensor) -> torch.Tensor:
        """B(t) = int_0^t beta(s) ds."""
        return 0.5 * t**2 * (self.beta_max - self.beta_min) + t * self.beta_min

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -B(t) / 2."""
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def time_of_integrated_beta(self, big_b: torch.Tensor) -> torch.Tensor:
        """The t >= 0 with B(t) = big_b (not clamped)."""
        slope = self.beta_max - self.beta_min
        return 2 * big_b / (self.beta_min + torch.sqrt(self.beta_min**2 + 2 * slope * big_b))  # no cancellation

    def time_of_noise_level(self, s: torch.Tensor) -> torch.Tensor:
        """The t with the VP alpha_bar(t) = 1 / (1 + s^2): B(t) = log(1 + s^2) (not clamped)."""
        return self.time_of_integrated_beta(torch.log1p(s**2))


class CosineSchedule:
    """The clipped cosine schedule of an N-step chain on [0, T]: clip_time t_c, clip_beta
    beta_c = beta(t_c) and clip_log_alpha_bar = log alpha_bar(t_c)."""

    def __init__(self, N: int, T: float = 1.0):
        self.N, self.T = int(N), float(T)
        self.clip_time = self.T - self._clip_angle() * 2 * (1 + OFFSET) / math.pi
        clip = torch.tensor(self.clip_time, dtype=torch.float64)
        self.clip_beta = float(self._beta(clip))
        self.clip_log_alpha_bar = float(self._log_alpha_bar(clip))

    def _angle_left(self, t):
        """v = pi/2 - u = (T - t) / (1 + s) pi / 2: cos u = sin v stays accurate near t = T."""
        return (self.T - t) / (1 + OFFSET) * (math.pi / 2)

    def _log_alpha_bar(self, t):
        start = math.cos(OFFSET / (1 + OFFSET) * math.pi / 2)
        return 2 * torch.log(torch.sin(self._angle_left(t)) / start)

    def _beta(self, t):
        """-d log alpha_bar / dt = pi / (1 + s) tan(u) = pi / (1 + s) / tan(v)."""
        return math.pi / (1 + OFFSET) / torch.tan(self._angle_left(t))

    def _clip_angle(self, iterations: int = 80) -> float:
        """The angle v_c of t_c: over the last step (angle v_1 at t = 1 - 1/N) the process loses
        2 log(sin v_1 / sin v_c) (cosine part) + beta_c (1 - t_c) = 2 v_c / tan v_c (clipped
        part) of log alpha_bar, which must be -log(1 - clip). The left side falls from +inf at
        v_c = 0 to beta(1 - 1/N) / N <= 2 at v_1 (only the last step is clipped): bisection."""
        v_1 = self.T / self.N / (1 + OFFSET) * math.pi / 2
        target = -math.log(1 - BETA_CLIP)
        low, high = 0.0, v_1
        for _ in range(iterations):
            v = 0.5 * (low + high)
            lost = 2 * math.log(math.sin(v_1) / math.sin(v)) + 2 * v / math.tan(v)
            low, high = (v, high) if lost > target else (low, v)
        return 0.5 * (low + high)

    def beta(self, t: torch.Tensor) -> torch.Tensor:
        """beta(t): the cosine's own up to t_c, then beta_c."""
        return self._beta(torch.clamp(t, max=self.clip_time))

    def log_alpha(self, t: torch.Tensor) -> torch.Tensor:
        """log alpha(t) = -1/2 int_0^t beta(s) ds: the cosine's own up to t_c, then linear."""
        past_clip = torch.clamp(t - self.clip_time, min=0)
        return 0.5 * (self._log_alpha_bar(torch.clamp(t, max=self.clip_time))
                      - self.clip_beta * past_clip)

    def time_of_noise_level(self, s: torch.Tensor) -> torch.Tensor:
        """The t with alpha_bar(t) = 1 / (1 + s^2) (float64, not clamped): up to t_c,
        tan v = cos u_0 / sqrt(sin^2 u_0 + s^2) (accurate at both ends), past it log alpha_bar
        falling at rate beta_c."""
        u_0 = OFFSET / (1 + OFFSET) * math.pi / 2
        v = torch.atan2(torch.full_like(s, math.cos(u_0)), torch.sqrt(math.sin(u_0) ** 2 + s**2))
        cosine = self.T - v * 2 * (1 + OFFSET) / math.pi
        clipped = self.clip_time + (torch.log1p(s**2) + self.clip_log_alpha_bar) / self.clip_beta
        return torch.where(cosine < self.clip_time, cosine, clipped)
