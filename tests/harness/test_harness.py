"""The shared harness's own logic: the percentile of every latency figure, the host-read probe, the toy words."""
from __future__ import annotations

import random

import pytest
import torch

from harness.probes import HostReads
from harness.stats import percentile
from harness.words import WORDS, sentence


def test_percentile_interpolates_between_order_statistics():
    xs = [0.001 * i for i in range(1, 101)]
    assert percentile(xs, 50) == pytest.approx(0.0505)
    assert percentile(xs, 99) == pytest.approx(0.09901)
    assert percentile(list(reversed(xs)), 0) == pytest.approx(0.001) and percentile(xs, 100) == pytest.approx(0.1)
    assert percentile([], 50) != percentile([], 50)  # nan


def test_host_reads_counts_values_brought_back_to_python():
    x = torch.arange(4.0)
    with HostReads() as counter:
        y = (x * 2).sum()
        y.item()
        x.tolist()
        x.cpu()
    assert counter.reads == 2 and counter.calls["cpu"] == 1


def test_sentences_use_the_toy_words():
    rng = random.Random(0)
    for _ in range(20):
        words = sentence(rng, 2, 5).split()
        assert 2 <= len(words) <= 5 and set(words) <= set(WORDS)
