"""Choosing n replies among over-generated candidates: small pure pieces, shared by the service and the
evaluation.

1. Relevance against generic answers, the maximum-mutual-information idea of Li et al. (NAACL 2016) in its
   anti-language-model form, per token:

       rank = (log p(r | c, z) - lambda * log p(r | c0, z0)) / |r|

   where log p(r | c, z) is the candidate's own log-probability under the latent code it was decoded from,
   and p(r | c0, z0) is the same decoder with the context reduced to the start-of-dialog marker and z0 the
   prior mean there: a reply that is likely whatever was said ("Yeah.", "Thank you.") scores high under
   both and is pushed down. |r| counts the scored tokens (</s> included).
2. A candidate cut off by the length limit, or empty, is never preferred to one that ended (it goes last),
   and one whose likelihood is more than ``margin`` nats per token below the best candidate's (a latent draw
   where the decoder is lost) is never preferred to a plausible one.
3. Maximal marginal relevance (Carbonell and Goldstein, SIGIR 1998) picks the n replies one at a time,
   each maximising rank_i - mu * max_j sim(i, j) over the replies already picked, so they stay different
   from each other; sim is the Jaccard overlap of their word unigrams and bigrams, in [0, 1].
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .lexicon import words

# Defaults of the reply pipeline, chosen by blind rating on validation contexts (docs/quality.md).
DEFAULT_LATENT_TEMPERATURE = 0.7
DEFAULT_CANDIDATES_PER_REPLY = 5
DEFAULT_MMI_WEIGHT = 0.5
DEFAULT_DIVERSITY = 1.0
DEFAULT_MARGIN = 1.0


@dataclass(frozen=True)
class Scored:
    """One candidate's scores, nats per token."""

    likelihood: float  # log p(r | c, z) / |r|
    anti_lm: float  # log p(r | c0, z0) / |r|
    rank: float  # likelihood - lambda * anti_lm, or -inf when it cannot be preferred
    ended: bool  # ended with </s> and is not empty


def score(logp: float, logp_null: float, n_scored: int, ended: bool, mmi_weight: float) -> Scored:
    n = max(n_scored, 1)
    lik, anti = logp / n, logp_null / n
    return Scored(lik, anti, lik - mmi_weight * anti, ended)


def features(text: str) -> frozenset[str]:
    ws = words(text)
    return frozenset(ws) | frozenset(a + " " + b for a, b in zip(ws, ws[1:]))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def select(texts: Sequence[str], scores: Sequence[Scored], n: int, diversity: float = DEFAULT_DIVERSITY,
           margin: float = DEFAULT_MARGIN) -> list[int]:
    """Indices of up to n candidates, best first, by maximal marginal relevance. Candidates that ended come
    before those that did not, and plausible ones (likelihood within ``margin`` of the best that ended) before
    the rest, whatever their scores."""
    feats = [features(t) for t in texts]
    best = max((s.likelihood for s in scores if s.ended), default=-math.inf)
    plausible = [s.likelihood >= best - margin for s in scores]
    left = list(range(len(texts)))
    picked: list[int] = []
    while left and len(picked) < n:
        def value(i: int) -> tuple[bool, bool, float, int]:
            redundancy = max((similarity(feats[i], feats[j]) for j in picked), default=0.0)
            v = scores[i].rank - diversity * redundancy
            return (scores[i].ended, plausible[i], v if math.isfinite(v) else -math.inf, -i)
        best = max(left, key=value)
        picked.append(best)
        left.remove(best)
    return picked
