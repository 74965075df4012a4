"""The evaluation's figures (training.evaluate) on tiny cases computed by hand."""
from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from training.evaluate import posterior_metrics, reply_metrics, words


def test_words_split_words_and_punctuation():
    assert words("Good morning, Anna! Don't.") == ["good", "morning", ",", "anna", "!", "don't", "."]


def test_reply_metrics_by_hand():
    groups = [["Good morning, Anna", "good morning"], ["No."]]
    refs = ["good morning, anna", "yes sure"]
    m = reply_metrics(groups, refs)
    # words: [good morning , anna] [good morning] | [no .]; references [good morning , anna] | [yes sure]
    # BLEU-1 of context 1: the first reply equals the reference (1); the second matches every unigram but is
    # half as long (brevity penalty exp(1 - 4/2)). Context 2 shares nothing with its reference (0).
    assert m["bleu1_precision"] == pytest.approx(((1 + math.exp(-1)) / 2 + 0) / 2)
    assert m["bleu1_recall"] == pytest.approx((1 + 0) / 2)
    assert m["bleu4_recall"] == pytest.approx(0.5)  # the exact copy scores 1 at every order
    # distinct-1 within a context: 4 distinct of 6 unigrams, and 2 of 2; over the split: 6 of 8
    assert m["distinct1_intra"] == pytest.approx((4 / 6 + 2 / 2) / 2)
    assert m["distinct1_inter"] == pytest.approx(6 / 8)
    # bigrams: (good morning) twice, (morning ,), (, anna) | (no .): 3 of 4 and 1 of 1; 4 of 5 over the split
    assert m["distinct2_intra"] == pytest.approx((3 / 4 + 1) / 2)
    assert m["distinct2_inter"] == pytest.approx(4 / 5)
    assert m["mean_len"] == pytest.approx((4 + 2 + 2) / 3)


def test_reply_metrics_of_nothing_are_zero():
    m = reply_metrics([], [])
    assert m["mean_len"] == 0.0 and m["distinct1_inter"] == 0.0 and "bleu1_precision" not in m


class _Batch:
    def __init__(self, size: int):
        self.size = size

    def to(self, device):
        return self


class _Examples:
    """Two batches: examples 0 and 1, then example 2."""

    def sequential(self, batch_size: int):
        return [[0, 1], [2]]

    def batch(self, idx):
        return _Batch(len(idx))


class _Model:
    """Returns fixed loss terms per batch, as CVAE.forward would (rc_nll_sum summed over tokens, kl and
    bow_loss as means over the batch's responses)."""

    cfg = SimpleNamespace(kgcvae=False, rs_dim=0)

    def __init__(self):
        self.outs = iter([
            dict(rc_nll_sum=torch.tensor(6.0), n_tokens=torch.tensor(3), kl=torch.tensor(0.5),
                 bow_loss=torch.tensor(1.0), mu_q=torch.tensor([[0.0, 1.0], [0.0, 3.0]]),
                 logvar_q=torch.zeros(2, 2), z=torch.tensor([[0.0, 1.0], [0.0, 3.0]])),
            dict(rc_nll_sum=torch.tensor(2.0), n_tokens=torch.tensor(1), kl=torch.tensor(2.0),
                 bow_loss=torch.tensor(4.0), mu_q=torch.tensor([[0.0, 5.0]]), logvar_q=torch.zeros(1, 2),
                 z=torch.tensor([[0.0, 5.0]])),
        ])

    def eval(self):
        return self

    def __call__(self, batch):
        return next(self.outs)


def test_posterior_metrics_by_hand():
    m = posterior_metrics(_Model(), _Examples(), batch_size=2, device=torch.device("cpu"))
    # 8 nats over 4 target tokens and 3 responses; KL 0.5 x 2 + 2 x 1 over 3 responses; bow 1 x 2 + 4 x 1
    assert m["rc_nll"] == pytest.approx(2.0) and m["rc_ppl"] == pytest.approx(math.exp(2.0))
    assert m["rc_loss"] == pytest.approx(8 / 3)
    assert m["kl"] == pytest.approx(1.0) and m["bow_loss"] == pytest.approx(2.0)
    assert m["elbo"] == pytest.approx(8 / 3 + 1.0)
    assert (m["n_tokens"], m["n_responses"]) == (4, 3)
    # posterior means: dimension 0 constant, dimension 1 in {1, 3, 5} (variance 8/3): one active unit
    assert m["active_units"] == 1 and m["latent_dim"] == 2
    # I(x; z) = E[log q(z|x)] - E[log q(z)], q(z) the mixture of the 3 posteriors (unit variances); with z at
    # each posterior's mean, E[log q(z|x)] = -D/2 (log 2 pi + 1) (its entropy) and the log 2 pi terms cancel
    def log_mixture(z1: float) -> float:  # dimension 0 adds nothing: z and every mean are 0 there
        return math.log(sum(math.exp(-(z1 - mu) ** 2 / 2) for mu in (1.0, 3.0, 5.0)) / 3)

    assert m["mi"] == pytest.approx(-1.0 - sum(log_mixture(z) for z in (1.0, 3.0, 5.0)) / 3)
    assert m["mi_ceiling"] == pytest.approx(math.log(3)) and not m["mi_saturated"]
