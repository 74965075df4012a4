"""The reranker's reply language model (model.replylm): a proper distribution, the counts it was built from,
and the bundle round trip."""
import math

import numpy as np
import pytest
from safetensors import SafetensorError

from model.config import BOS_ID, EOS_ID
from model.replylm import ReplyLM

V = 12
REPLIES = [[4, 5], [4, 5], [4, 5], [4, 6, 7], [8, 9, 10, 11], [5], [4, 5], [6, 7, 8]]


@pytest.mark.parametrize("prev", [BOS_ID, 4, 5, 6, 9])
def test_each_conditional_sums_to_one(prev):
    lm = ReplyLM.build(REPLIES, V)
    total = sum(math.exp(_step(lm, prev, w)) for w in range(V))
    assert total == pytest.approx(1.0, abs=1e-9)


def _step(lm: ReplyLM, prev: int, w: int) -> float:
    key = prev * V + w
    i = np.searchsorted(lm.keys, key)
    c = lm.counts[i] if i < len(lm.keys) and lm.keys[i] == key else 0.0
    cv = lm.c_prev[prev]
    if cv == 0:
        return math.log(lm.p_cont[w])
    return math.log(max(c - lm.discount, 0) / cv + lm.discount * lm.t_prev[prev] / cv * lm.p_cont[w])


def test_a_sequence_is_the_sum_of_its_steps():
    lm = ReplyLM.build(REPLIES, V)
    r = [4, 6, 7]
    expected = _step(lm, BOS_ID, 4) + _step(lm, 4, 6) + _step(lm, 6, 7) + _step(lm, 7, EOS_ID)
    assert lm.logprobs([r])[0] == pytest.approx(expected, abs=1e-12)
    # a batch scores each reply as alone
    batch = lm.logprobs([[5], r, [], [9, 9]])
    assert batch[1] == pytest.approx(expected, abs=1e-12)
    assert batch == pytest.approx([lm.logprobs([x])[0] for x in ([5], r, [], [9, 9])], abs=1e-12)


def test_counts_and_discount():
    lm = ReplyLM.build(REPLIES, V)
    # <s> 4 is seen 5 times, 4 5 four times; bigrams seen once and twice set the discount
    assert lm.counts[np.searchsorted(lm.keys, BOS_ID * V + 4)] == 5
    assert lm.counts[np.searchsorted(lm.keys, 4 * V + 5)] == 4
    _, counts = np.unique(np.concatenate([np.array([BOS_ID, *r]) * V + np.array([*r, EOS_ID]) for r in REPLIES]),
                          return_counts=True)
    n1, n2 = (counts == 1).sum(), (counts == 2).sum()
    assert lm.discount == pytest.approx(n1 / (n1 + 2 * n2))


def test_the_frequent_reply_is_the_likely_one():
    lm = ReplyLM.build(REPLIES, V)
    frequent, rare, unseen = lm.logprobs([[4, 5], [8, 9, 10, 11], [11, 10, 9, 8]])
    assert frequent > rare > unseen
    assert all(math.isfinite(x) for x in (frequent, rare, unseen))


def test_save_load_round_trip(tmp_path):
    lm = ReplyLM.build(REPLIES, V)
    lm.save(tmp_path / "lm.safetensors")
    back = ReplyLM.load(tmp_path / "lm.safetensors")
    assert back.vocab_size == V and len(back) == len(lm)
    assert back.logprobs(REPLIES) == pytest.approx(lm.logprobs(REPLIES), abs=1e-12)


def test_bad_input_is_refused(tmp_path):
    with pytest.raises(ValueError, match="piece ids"):
        ReplyLM.build([[V]], V)
    lm = ReplyLM.build(REPLIES, V)
    with pytest.raises(ValueError, match="piece ids"):
        lm.logprobs([[V + 3]])
    with pytest.raises(ValueError, match="sorted"):
        ReplyLM(V, lm.keys[::-1].copy(), lm.counts[::-1].copy(), lm.discount)
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(SafetensorError):
        ReplyLM.load(tmp_path / "x.safetensors")
