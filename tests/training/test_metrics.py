import math
import warnings

import numpy as np
import pytest
import torch

from training.metrics import (
    MetricAccumulator,
    active_units,
    bleu_precision_recall,
    distinct_inter,
    distinct_intra,
    distinct_n,
    mutual_information,
    sentence_bleu_n,
)

REF = "i do not know what you mean".split()


# ---------------------------------------------------------------------------------------------- BLEU


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_identical_hyp_and_ref_score_one(n):
    scores = bleu_precision_recall([REF], [REF])
    assert scores[f"bleu{n}_precision"] == pytest.approx(1.0)
    assert scores[f"bleu{n}_recall"] == pytest.approx(1.0)


def test_unclipped_bleu_keeps_nltk_method7_value():
    # method 5 averages p_1 with m[-1] = p_1 + 1 and p_2: (2 + 1 + 1) / 3 = 4/3 for an exact match
    assert sentence_bleu_n(REF, REF, 1, clip=False) == pytest.approx(4 / 3)
    assert sentence_bleu_n(REF, REF, 1) == 1.0


def test_bleu1_precision_and_recall_differ_by_hand():
    # One reference, two samples: one equal to it, one sharing no token.
    # B_1(ref, good) = 1 (clipped), B_1(ref, bad) = 0 (no unigram matches).
    # precision = mean over hyps of max over refs = (1 + 0) / 2; recall = mean over refs of max over hyps = 1.
    ref = "a b c d".split()
    scores = bleu_precision_recall([ref, "w x y z".split()], [ref])
    assert scores["bleu1_precision"] == pytest.approx(0.5)
    assert scores["bleu1_recall"] == pytest.approx(1.0)


def test_bleu1_brevity_penalty_by_hand():
    # hyp "a b" against "a b c d": p_1 = 1, smoothed (2 + 1 + 0) / 3 = 1 since p_5 = 0 for this pair,
    # brevity penalty exp(1 - 4/2) = e^-1.
    assert sentence_bleu_n("a b c d".split(), "a b".split(), 1) == pytest.approx(math.exp(-1))


def test_bleu_keys_and_empty_inputs():
    keys = {f"bleu{n}_{kind}" for n in range(1, 5) for kind in ("precision", "recall")}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no nltk warning escapes
        for hyps, refs in [([], [REF]), ([REF], []), ([[]], [REF]), ([REF], [[]]), ([["x"]], [["y", "z"]])]:
            scores = bleu_precision_recall(hyps, refs)
            assert set(scores) == keys
            assert all(v == 0.0 for v in scores.values())


def test_bleu_in_unit_interval_on_partial_overlap():
    scores = bleu_precision_recall(["i do not know".split(), "what do you mean".split()], [REF, "no idea".split()])
    assert all(0.0 <= v <= 1.0 for v in scores.values())
    assert scores["bleu1_precision"] > scores["bleu4_precision"]


# ------------------------------------------------------------------------------------------ distinct


def test_distinct_n_on_literal_list():
    replies = [["a", "b", "a"], ["a", "b"]]
    # unigrams a b a a b: 2 distinct of 5; bigrams (a b) (b a) (a b): 2 of 3
    assert distinct_n(replies, 1) == pytest.approx(2 / 5)
    assert distinct_n(replies, 2) == pytest.approx(2 / 3)
    assert distinct_n(replies, 3) == pytest.approx(1.0)  # only (a b a)
    assert distinct_n(replies, 4) == 0.0
    assert distinct_n([], 1) == 0.0


def test_distinct_intra_and_inter():
    groups = [[["a", "b"], ["a", "b"]], [["c", "d"], ["e", "f"]]]
    # intra: context 1 -> 2/4, context 2 -> 4/4; mean 0.75. inter: a b c d e f over 8 -> 6/8
    assert distinct_intra(groups, 1) == pytest.approx(0.75)
    assert distinct_inter(groups, 1) == pytest.approx(0.75)
    assert distinct_intra(groups, 2) == pytest.approx((1 / 2 + 1) / 2)
    assert distinct_inter(groups, 2) == pytest.approx(3 / 4)
    assert distinct_intra([], 1) == 0.0


# ------------------------------------------------------------------------------------------- latent


def test_active_units_on_constructed_posterior():
    rng = np.random.default_rng(0)
    base = rng.standard_normal((1000, 2))
    base = (base - base.mean(0)) / base.std(0)  # exactly unit variance per column
    mu = np.stack([base[:, 0] * 1.0, base[:, 1] * math.sqrt(0.5), np.full(1000, 3.0)], axis=1)  # var 1, 0.5, 0
    assert active_units(mu) == 2
    count, variances = active_units(mu, return_variances=True)
    assert count == 2
    np.testing.assert_allclose(variances, [1.0, 0.5, 0.0], atol=1e-9)
    assert active_units(mu, threshold=0.75) == 1


def test_mutual_information_near_zero_when_posteriors_equal():
    torch.manual_seed(0)
    batch, dim = 2000, 4
    mu = torch.full((batch, dim), 0.3)
    logvar = torch.zeros(batch, dim)
    z = mu + torch.randn(batch, dim) * (0.5 * logvar).exp()
    assert abs(mutual_information(mu, logvar, z)) < 0.1


def test_mutual_information_large_when_posteriors_distinct_and_narrow():
    torch.manual_seed(0)
    batch, dim = 256, 4
    mu = torch.randn(batch, dim) * 3
    logvar = torch.full((batch, dim), math.log(1e-3))
    z = mu + torch.randn(batch, dim) * (0.5 * logvar).exp()
    mi = mutual_information(mu, logvar, z)
    # each z_i is explained by its own x_i only, so log q(z_i) = log q(z_i|x_i) - log B and MI -> log B
    # (up to the sampling noise of log q(z_i|x_i) around its mean, std sqrt(D/2B) ~ 0.09)
    assert mi == pytest.approx(math.log(batch), abs=0.3)


def test_mutual_information_rejects_mismatched_shapes():
    with pytest.raises(ValueError):
        mutual_information(torch.zeros(4, 2), torch.zeros(4, 2), torch.zeros(4, 3))


# ---------------------------------------------------------------------------------------- averages


def test_metric_accumulator_weighted_means():
    acc = MetricAccumulator()
    acc.add_batch(rc_nll_sum=30.0, n_tokens=10, kl_sum=4.0, n_responses=2, bow_loss_sum=6.0)
    acc.add_batch(rc_nll_sum=torch.tensor(10.0), n_tokens=10, kl_sum=2.0, n_responses=2, bow_loss_sum=2.0)
    out = acc.summary()
    assert out["rc_nll"] == pytest.approx(2.0)  # 40 nats / 20 tokens
    assert out["rc_ppl"] == pytest.approx(math.exp(2.0))
    assert out["rc_loss"] == pytest.approx(10.0)  # 40 nats / 4 responses
    assert out["kl"] == pytest.approx(1.5)
    assert out["bow_loss"] == pytest.approx(2.0)
    assert out["elbo"] == pytest.approx(11.5)
    assert out["n_tokens"] == 20 and out["n_responses"] == 4


def test_metric_accumulator_generic_terms_and_empty():
    acc = MetricAccumulator()
    acc.add("mi", 3.0, 1)
    acc.add("mi", 1.0, 1)
    assert acc.mean("mi") == pytest.approx(2.0)
    acc.add("nothing", 0.0, 0)
    assert math.isnan(acc.mean("nothing"))
    assert "rc_ppl" not in acc.summary()


def test_mutual_information_chunked_equals_direct_and_is_capped_by_log_n():
    from training.metrics import mi_ceiling

    g = torch.Generator().manual_seed(0)
    mu = torch.randn(300, 5, generator=g) * 3
    logvar = torch.randn(300, 5, generator=g) * 0.3 - 2
    z = mu + torch.randn(300, 5, generator=g) * (0.5 * logvar).exp()
    whole = mutual_information(mu, logvar, z)
    assert mutual_information(mu, logvar, z, chunk=7) == pytest.approx(whole, rel=1e-9)
    # direct N x N x D evaluation of the same formula
    diff = z.double().unsqueeze(1) - mu.double().unsqueeze(0)
    lv = logvar.double()
    dens = -0.5 * (diff.pow(2) / lv.exp().unsqueeze(0) + lv.unsqueeze(0) + math.log(2 * math.pi)).sum(-1)
    neg_h = (-0.5 * 5 * math.log(2 * math.pi) - 0.5 * (1 + lv).sum(-1)).mean()
    direct = float(neg_h - (torch.logsumexp(dens, 1) - math.log(300)).mean())
    assert whole == pytest.approx(direct, rel=1e-9)
    # well-separated narrow posteriors: a batch of 64 saturates near log 64 (the old batch-wise figure), the
    # whole split reads higher, near its own ceiling log 300
    batch = mutual_information(mu[:64], logvar[:64], z[:64])
    assert abs(batch - mi_ceiling(64)) < 0.3
    assert whole > batch + 1.0 and abs(whole - mi_ceiling(300)) < 0.5
