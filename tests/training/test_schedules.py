import math

import pytest

from training.schedules import (ScheduleConfig, beta_at, cosine_restart_lr, cyclical_beta, lr_at,
                                monotonic_beta, ramp)

# T=400, M=4, R=0.5, linear: cycles of 100 steps, rising over the first 50.
CYCLICAL_TABLE = [
    (1, 0.0), (2, 0.02), (26, 0.5), (50, 0.98), (51, 1.0), (75, 1.0), (100, 1.0),
    (101, 0.0), (126, 0.5), (151, 1.0), (201, 0.0), (226, 0.5), (301, 0.0), (351, 1.0), (400, 1.0),
]


@pytest.mark.parametrize("t,beta", CYCLICAL_TABLE)
def test_cyclical_linear_table(t, beta):
    assert cyclical_beta(t, 400, cycles=4, ratio=0.5) == pytest.approx(beta)


def test_cyclical_restarts_at_each_cycle_start():
    firsts = [t for t in range(1, 401) if cyclical_beta(t, 400, 4, 0.5) == 0.0]
    assert firsts == [1, 101, 201, 301]


def test_cyclical_uneven_period_uses_ceil():
    # T=10, M=3: period 10/3, ceil 4: tau = ((t-1) mod 4) / (10/3)
    assert cyclical_beta(5, 10, 3, 0.5) == 0.0
    assert cyclical_beta(2, 10, 3, 0.5) == pytest.approx(0.3 / 0.5)


@pytest.mark.parametrize("shape,u,f", [
    ("linear", 0.25, 0.25), ("cosine", 0.5, 0.5), ("cosine", 0.0, 0.0), ("cosine", 1.0, 1.0),
    ("sigmoid", 0.5, 0.5), ("sigmoid", 0.0, 1 / (1 + math.exp(6))),
])
def test_ramp_shapes(shape, u, f):
    assert ramp(u, shape) == pytest.approx(f)


def test_monotonic():
    assert monotonic_beta(1, 100) == 0.0
    assert monotonic_beta(51, 100) == pytest.approx(0.5)
    assert monotonic_beta(101, 100) == 1.0
    assert monotonic_beta(5000, 100, beta_max=0.5) == 0.5


def test_constant_and_dispatch():
    assert beta_at(7, 100, ScheduleConfig(kind="constant", beta_max=0.3)) == 0.3
    assert beta_at(26, 400, ScheduleConfig(kind="cyclical")) == pytest.approx(0.5)
    assert beta_at(26, 400, ScheduleConfig(kind="monotonic", warmup_steps=50)) == pytest.approx(0.5)


def test_lr_restart():
    assert cosine_restart_lr(1, 400, 4, 1e-3) == pytest.approx(1e-3)
    assert cosine_restart_lr(51, 400, 4, 1e-3) == pytest.approx(0.5e-3)
    assert cosine_restart_lr(101, 400, 4, 1e-3) == pytest.approx(1e-3)
    cfg = ScheduleConfig(kind="cyclical", lr_restart=True)
    assert lr_at(51, 400, 1e-3, cfg) == pytest.approx(0.5e-3)
    assert lr_at(51, 400, 1e-3, ScheduleConfig(kind="monotonic", lr_restart=True)) == 1e-3


@pytest.mark.parametrize("bad", [dict(kind="linear"), dict(shape="step"), dict(cycles=0), dict(ratio=1.5)])
def test_bad_schedule_config(bad):
    with pytest.raises(ValueError):
        ScheduleConfig(**bad)
