"""Reranking pieces (model.rerank) on literal values."""
import math

from model.rerank import Scored, features, score, select, similarity


def test_score_is_per_token_likelihood_minus_weighted_anti_lm():
    s = score(logp=-6.0, logp_null=-4.0, n_scored=3, ended=True, mmi_weight=0.5)
    assert s.likelihood == -2.0 and s.anti_lm == -4.0 / 3
    assert math.isclose(s.rank, -2.0 + 0.5 * 4.0 / 3)


def test_generic_reply_loses_to_a_specific_one_of_equal_likelihood():
    generic = score(-4.0, -2.0, 2, True, 0.5)  # likely with no context at all
    specific = score(-4.0, -12.0, 2, True, 0.5)  # unlikely without this context
    assert select(["Yeah.", "The blue one, by the lake."], [generic, specific], 1) == [1]
    assert select(["Yeah.", "The blue one, by the lake."], [generic, specific], 1, diversity=0.0) == [1]
    # with the anti-LM weight at 0 the tie goes to the first
    flat = [score(-4.0, -2.0, 2, True, 0.0), score(-4.0, -12.0, 2, True, 0.0)]
    assert select(["Yeah.", "The blue one."], flat, 1) == [0]


def test_replies_that_did_not_end_come_last():
    cut = Scored(-0.1, -5.0, 2.0, ended=False)
    ok = Scored(-3.0, -3.0, -1.5, ended=True)
    assert select(["It's just a", "Sure, see you then."], [cut, ok], 2) == [1, 0]


def test_mmr_prefers_a_different_reply_to_a_near_copy():
    texts = ["I like tea a lot.", "I like tea a lot!", "Coffee for me, thanks."]
    scores = [Scored(0, 0, -1.0, True), Scored(0, 0, -1.05, True), Scored(0, 0, -1.3, True)]
    assert select(texts, scores, 2, diversity=1.0) == [0, 2]
    assert select(texts, scores, 2, diversity=0.0) == [0, 1]


def test_similarity_bounds():
    a, b = features("the cat sat"), features("a dog ran")
    assert similarity(a, a) == 1.0 and similarity(a, b) == 0.0
    assert 0 < similarity(a, features("the cat ran")) < 1


def test_a_lost_latent_draw_is_not_chosen_for_being_different():
    texts = ["I like tea a lot.", "I like tea a lot!", "Zebra moon the of."]
    good = [Scored(-2.0, -3.0, -0.5, True), Scored(-2.1, -3.0, -0.6, True)]
    lost = Scored(-4.5, -9.0, 0.0, True)  # high rank (unlike anything) but 2.5 nats/token below the best
    assert select(texts, [*good, lost], 2, diversity=1.0) == [0, 1]
    assert select(texts, [*good, lost], 2, diversity=1.0, margin=5.0) == [2, 0]
    assert select(texts, [*good, lost], 3) == [0, 1, 2]  # still used when nothing else is left
