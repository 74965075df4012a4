"""The response-selection head (PLATO's RS objective): its loss, its scores, its negatives, its use in the
reranker."""
from __future__ import annotations

import math

import pytest
import torch

from model.config import BOS_ID, EOS_ID, preset
from model.cvae import CVAE
from model.inputs import collate
from model.rerank import coherence_logprobs, score


def batch(B: int = 6, seed: int = 0, distractors: bool = True, echo: bool = False):
    """Random one-turn contexts and replies; ``echo``: each reply repeats its context (a pairing to learn)."""
    g = torch.Generator().manual_seed(seed)

    def utt(n: int) -> list[int]:
        return [BOS_ID, *torch.randint(5, 64, (n,), generator=g).tolist(), EOS_ID]

    contexts = [[utt(3 + b % 3)] for b in range(B)]
    replies = [c[0] for c in contexts] if echo else [utt(2 + b % 4) for b in range(B)]
    return collate(contexts, [[0]] * B, replies, distractors=[utt(3) for _ in range(B)] if distractors else None)


def test_rs_loss_is_the_cross_entropy_over_the_batch_and_the_distractors():
    torch.manual_seed(0)
    model = CVAE(preset("tiny", rs_dim=8))
    b = batch()
    out = model(b)
    assert out["rs_loss"] > 0 and 0 <= out["rs_acc"] <= 1
    # at initialisation the scores are near one another: about log(2B) nats of the 2B candidates
    assert out["rs_loss"].item() == pytest.approx(math.log(12), abs=0.5)
    no_dist = model(batch(distractors=False))
    assert no_dist["rs_loss"].item() == pytest.approx(math.log(6), abs=0.5)


def test_rs_loss_falls_when_overfitting_one_batch():
    torch.manual_seed(0)
    model = CVAE(preset("tiny", rs_dim=8))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    b = batch(echo=True)
    first = float(model(b)["rs_loss"].detach())
    for _ in range(250):
        loss = model(b)["rs_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = model(b)
    assert float(out["rs_loss"].detach()) < 0.3 * first and float(out["rs_acc"]) == 1.0


def test_coherence_scores_each_row_and_empty_replies_lose():
    torch.manual_seed(0)
    model = CVAE(preset("tiny", rs_dim=8)).eval()
    cond = model.encode(batch(3))
    with torch.no_grad():
        s = model.coherence(cond, [[5, 6, 7], [], [9]])
        pairs = model.selection_scores(cond, model.utt_encoder(
            torch.tensor([[BOS_ID, 5, 6, 7, EOS_ID]]), torch.tensor([5]), model.embedding))
    assert s[1] == -math.inf and math.isfinite(s[0]) and math.isfinite(s[2])
    assert s[0] == pytest.approx(float(pairs[0, 0]), abs=1e-5)
    assert model(batch(3, distractors=False))["rs_loss"] > 0
    assert float(CVAE(preset("tiny"))(batch(3))["rs_loss"]) == 0.0  # no head: no loss


def test_the_reranker_adds_the_weighted_coherence():
    lp = coherence_logprobs([1.0, 2.0, float("-inf")])
    assert lp[2] == -math.inf and math.exp(lp[0]) + math.exp(lp[1]) == pytest.approx(1.0)
    plain = score(-4.0, -6.0, 4, True, 0.5)
    with_c = score(-4.0, -6.0, 4, True, 0.5, coherence=lp[1], coherence_weight=0.3)
    assert with_c.rank == pytest.approx(plain.rank + 0.3 * lp[1]) and with_c.coherence == lp[1]
    assert coherence_logprobs([float("-inf")] * 2) == [float("-inf")] * 2
