"""The retrieval baseline: BM25 by hand, and the replies it returns."""
from __future__ import annotations

import math

import pytest

from training.__main__ import main as cli
from training.data import Dialog, Turn
from training.retrieval import BM25, Retriever


def test_bm25_matches_the_formula_by_hand():
    docs = [["the", "cat", "sat"], ["the", "dog"], ["cat", "cat", "naps"]]
    index = BM25(docs, k1=1.2, b=0.75)
    n, avg = 3, 8 / 3
    idf = {w: math.log(1 + (n - df + 0.5) / (df + 0.5)) for w, df in (("cat", 2), ("the", 2), ("naps", 1))}

    def term(tf, length, w):
        return idf[w] * tf * 2.2 / (tf + 1.2 * (1 - 0.75 + 0.75 * length / avg))

    s = index.scores(["cat", "naps", "unseen"])
    assert s[0] == pytest.approx(term(1, 3, "cat"))
    assert s[1] == 0
    assert s[2] == pytest.approx(term(2, 3, "cat") + term(1, 3, "naps"))
    assert index.scores(["nothing"]).tolist() == [0, 0, 0]


def dialog(*texts: str) -> Dialog:
    return Dialog(id="d", turns=[Turn(text=t, speaker="AB"[i % 2]) for i, t in enumerate(texts)])


def test_replies_follow_the_most_similar_turns_without_repeats():
    r = Retriever([dialog("do you like pizza", "yes I love pizza", "me too"),
                   dialog("pizza is great", "Yes I love pizza!", "what else"),
                   dialog("do you like dogs", "dogs are the best", "do you like pizza")])
    out = r.respond(["hello", "Do you like pizza?"], n=5)
    assert out[0] == "yes I love pizza"  # the reply to the identical turn first
    assert "Yes I love pizza!" not in out  # the same words as a reply already given
    assert "do you like pizza" not in out  # a reply that repeats the query is no reply
    assert r.respond(["zebra"], n=3) == []  # nothing shares a word: no reply rather than a random one


@pytest.mark.parametrize("args", [["-n", "0"], ["-n", "17"], ["--contexts", "-1"], ["-n", "x"]])
def test_cli_refuses_out_of_range_counts(args, capsys):
    with pytest.raises(SystemExit) as e:
        cli(["retrieval", "--bundle", "b", "--corpus", "chitchat", "--out", "o.json", *args])
    assert e.value.code == 2 and "argument" in capsys.readouterr().err
