"""KL-weight (beta) and learning-rate schedules: pure functions of the step t = 1, 2, ..., T.

Cyclical annealing (Fu et al., NAACL 2019): T steps are split into M cycles of length T/M. Inside
a cycle the position is tau = ((t - 1) mod ceil(T / M)) / (T / M) in [0, 1). For tau <= R, beta
rises as beta_max * f(tau / R); for the rest of the cycle it stays at beta_max. f rises from 0 to 1
on [0, 1]: linear f(u) = u, cosine f(u) = (1 - cos(pi u)) / 2, or the authors' sigmoid
f(u) = 1 / (1 + exp(-(12 u - 6))).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SHAPES = ("linear", "cosine", "sigmoid")
KINDS = ("constant", "monotonic", "cyclical")


def ramp(u: float, shape: str = "linear") -> float:
    """f(u) for u in [0, 1]."""
    u = min(max(u, 0.0), 1.0)
    if shape == "linear":
        return u
    if shape == "cosine":
        return (1.0 - math.cos(math.pi * u)) / 2.0
    if shape == "sigmoid":
        return 1.0 / (1.0 + math.exp(-(12.0 * u - 6.0)))
    raise ValueError(f"unknown ramp shape {shape!r}; choose one of {', '.join(SHAPES)}")


def constant_beta(t: int, beta_max: float = 1.0) -> float:
    return beta_max


def monotonic_beta(t: int, warmup_steps: int, beta_max: float = 1.0, shape: str = "linear") -> float:
    """Rise from 0 at t = 1 to beta_max at t = W + 1 (linear: beta = beta_max * (t - 1) / W), then flat."""
    if warmup_steps <= 0:
        return beta_max
    return beta_max * ramp((t - 1) / warmup_steps, shape)


def cycle_position(t: int, total_steps: int, cycles: int) -> float:
    """tau = ((t - 1) mod ceil(T / M)) / (T / M)."""
    period = total_steps / cycles
    return ((t - 1) % math.ceil(period)) / period


def cyclical_beta(t: int, total_steps: int, cycles: int = 4, ratio: float = 0.5,
                  beta_max: float = 1.0, shape: str = "linear") -> float:
    tau = cycle_position(t, total_steps, cycles)
    if tau <= ratio and ratio > 0:
        return beta_max * ramp(tau / ratio, shape)
    return beta_max


def cosine_restart_lr(t: int, total_steps: int, cycles: int, lr_max: float, lr_min: float = 0.0) -> float:
    """Cosine learning-rate decay restarted at the start of each cycle (as the authors pair with
    the cyclical schedule): lr = lr_min + (lr_max - lr_min) * (1 + cos(pi * tau)) / 2."""
    tau = cycle_position(t, total_steps, cycles)
    return lr_min + (lr_max - lr_min) * (1.0 + math.cos(math.pi * tau)) / 2.0


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "cyclical"  # constant | monotonic | cyclical
    beta_max: float = 1.0
    cycles: int = 4  # M
    ratio: float = 0.5  # R: proportion of a cycle spent rising
    shape: str = "linear"  # linear | cosine | sigmoid
    warmup_steps: int = 10000  # W, for monotonic
    lr_restart: bool = False  # cosine learning-rate restart per cycle (cyclical only)
    lr_min: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"schedule.kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"schedule.shape must be one of {', '.join(SHAPES)}, got {self.shape!r}")
        if self.cycles < 1:
            raise ValueError("schedule.cycles must be >= 1")
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError("schedule.ratio must lie in [0, 1]")
        if not (math.isfinite(self.beta_max) and self.beta_max >= 0):
            raise ValueError(f"schedule.beta_max must be a finite number >= 0, got {self.beta_max!r}")
        if self.warmup_steps < 0:
            raise ValueError("schedule.warmup_steps must be >= 0")
        if not (math.isfinite(self.lr_min) and self.lr_min >= 0):
            raise ValueError("schedule.lr_min must be a finite number >= 0")


def beta_at(t: int, total_steps: int, cfg: ScheduleConfig) -> float:
    if cfg.kind == "constant":
        return constant_beta(t, cfg.beta_max)
    if cfg.kind == "monotonic":
        return monotonic_beta(t, cfg.warmup_steps, cfg.beta_max, cfg.shape)
    return cyclical_beta(t, total_steps, cfg.cycles, cfg.ratio, cfg.beta_max, cfg.shape)


def lr_at(t: int, total_steps: int, lr: float, cfg: ScheduleConfig) -> float:
    if cfg.kind == "cyclical" and cfg.lr_restart:
        return cosine_restart_lr(t, total_steps, cfg.cycles, lr, cfg.lr_min)
    return lr
