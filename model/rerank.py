"""Choosing n replies among over-generated candidates: small pieces, shared by the service and the evaluation
through model.pipeline.

1. Relevance against generic answers, the maximum-mutual-information idea of Li et al. (NAACL 2016) in its
   anti-language-model form, per token:

       rank = (log p(r | c, z) - lambda * log p(r)) / |r|

   where log p(r | c, z) is the candidate's own log-probability under the latent code it was decoded from,
   and log p(r) estimates how likely the reply is whatever was said (:class:`AntiLM`): by default
   log mean_k p(r | c_k, z_k) over the four PROBE_CONTEXTS (the start-of-dialog marker alone and three
   everyday turns), z_k the prior mean of each. A reply likely after all of them ("Yeah.", "Thank you.")
   scores high under both terms and is pushed down. |r| counts the scored tokens (</s> included). With a
   bundle whose model has a response-selection head (model.cvae, rs_dim > 0) and a coherence weight kappa > 0,
   rank also gains kappa * log softmax_i s(c, r_i), the head's belief that candidate i is the reply that
   followed the context, among the request's candidates (nats per reply).
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
from typing import TYPE_CHECKING

import torch

from .lexicon import words

if TYPE_CHECKING:
    from .bundle import Bundle

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
    anti_lm: float  # log p(r) / |r| (AntiLM)
    rank: float  # likelihood - lambda * anti_lm [+ kappa * coherence], or -inf when it cannot be preferred
    ended: bool  # ended with </s> and is not empty
    coherence: float | None = None  # log softmax_i s(c, r_i) over the candidates, when the term is on


def score(logp: float, logp_null: float, n_scored: int, ended: bool, mmi_weight: float,
          coherence: float | None = None, coherence_weight: float = 0.0) -> Scored:
    n = max(n_scored, 1)
    lik, anti = logp / n, logp_null / n
    rank = lik - mmi_weight * anti
    if coherence is not None and coherence_weight:
        rank += coherence_weight * coherence
    return Scored(lik, anti, rank, ended, coherence)


def coherence_logprobs(raw: Sequence[float]) -> list[float]:
    """log softmax of the response-selection scores s(c, r_i) over a request's candidates (-inf stays -inf:
    an empty candidate)."""
    t = torch.tensor(raw, dtype=torch.float64)
    if not torch.isfinite(t).any():
        return [float("-inf")] * len(raw)
    return torch.log_softmax(t, dim=0).tolist()


def features(text: str) -> frozenset[str]:
    ws = words(text)
    return frozenset(ws) | frozenset(a + " " + b for a, b in zip(ws, ws[1:]))


def similarity(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def select(texts: Sequence[str], scores: Sequence[Scored], n: int, diversity: float = DEFAULT_DIVERSITY,
           margin: float = DEFAULT_MARGIN) -> list[int]:
    """Indices of up to n candidates, in the order maximal marginal relevance picks them (:func:`picks`)."""
    return [i for i, _ in picks(texts, scores, n, diversity, margin)]


def picks(texts: Sequence[str], scores: Sequence[Scored], n: int, diversity: float = DEFAULT_DIVERSITY,
          margin: float = DEFAULT_MARGIN) -> list[tuple[int, float]]:
    """(index, MMR value) of up to n candidates, in the order maximal marginal relevance picks them: each
    maximises its MMR value, rank - diversity * (its largest similarity to a reply picked before it), within
    tiers: candidates that ended come before those that did not, and plausible ones (likelihood within
    ``margin`` of the best that ended) before the rest, whatever their values. Within a tier the values never
    rise down the list (a candidate's value can only fall as more replies are picked), while the ranks can:
    a reply with a higher rank that repeats an earlier pick comes later."""
    feats = [features(t) for t in texts]
    best = max((s.likelihood for s in scores if s.ended), default=-math.inf)
    plausible = [s.likelihood >= best - margin for s in scores]
    left = list(range(len(texts)))
    picked: list[tuple[int, float]] = []
    while left and len(picked) < n:
        def value(i: int) -> tuple[bool, bool, float, int]:
            redundancy = max((similarity(feats[i], feats[j]) for j, _ in picked), default=0.0)
            v = scores[i].rank - diversity * redundancy
            return (scores[i].ended, plausible[i], v if math.isfinite(v) else -math.inf, -i)
        top = max(left, key=value)
        picked.append((top, value(top)[2]))
        left.remove(top)
    return picked


# Contexts standing in for "any context" in the anti-language-model term: the start of a dialog and a few
# everyday turns. A reply that is likely after all of them ("What?", "That's cool", "lol") is generic.
PROBE_CONTEXTS: tuple[tuple[str, ...], ...] = (
    (),
    ("Hi, how are you?",),
    ("What did you do this weekend?",),
    ("I don't know what to think about that.",),
)
ANTI_LM_KINDS = ("probes", "reply_lm")


class RerankError(ValueError):
    """A reranking term the settings ask for that this bundle cannot give (its anti-LM, its coherence head)."""


class AntiLM:
    """log p(r), the anti-language-model term, estimated one of two ways:

    - ``probes`` (the default): log mean_k p(r | c_k, z_k) over PROBE_CONTEXTS, z_k the prior mean of each:
      one teacher-forced decoder pass over (distinct replies x probes) rows through the vocabulary projection.
    - ``reply_lm``: the bundle's bigram model of the training replies (model.replylm): table lookups, nearly
      free, but blind raters judged its choices less sensible (docs/quality.md, "A cheaper anti-LM").
    """

    def __init__(self, bundle: "Bundle", kind: str = "probes"):
        from .inputs import encode_contexts

        if kind not in ANTI_LM_KINDS:
            raise RerankError(f"anti-LM kind must be one of {', '.join(ANTI_LM_KINDS)}, got {kind!r}")
        if kind == "reply_lm" and bundle.reply_lm is None:
            raise RerankError(f"{bundle.path}: the bundle holds no reply language model (reply_lm.safetensors); "
                              "build one with `python -m training lexicon --bundle ...` or use the probes")
        self.kind = kind
        self.reply_lm = bundle.reply_lm
        self.model = bundle.model
        if self.kind == "probes":
            with torch.inference_mode():
                self.cond, self.z, _ = encode_contexts(bundle, PROBE_CONTEXTS)  # z: the prior means

    @torch.inference_mode()
    def logprob(self, tokens: list[list[int]]) -> list[float]:
        """log p(r) per reply, nats; computed once per distinct non-empty reply (over-generated candidates
        repeat), 0.0 for an empty one."""
        distinct = list(dict.fromkeys(tuple(t) for t in tokens if t))
        if not distinct:
            return [0.0] * len(tokens)
        if self.reply_lm is not None and self.kind == "reply_lm":
            values = self.reply_lm.logprobs(distinct)
        else:
            B, K = len(distinct), self.cond.shape[0]
            cond = self.cond.repeat_interleave(B, 0)  # (K * B, Dc): probe-major
            z = self.z.repeat_interleave(B, 0)
            lp = torch.tensor(self.model.sequence_logprob(cond, z, [list(t) for t in distinct] * K),
                              dtype=torch.float64)
            values = (torch.logsumexp(lp.view(K, B), dim=0) - math.log(K)).tolist()
        scores = dict(zip(distinct, values))
        return [scores.get(tuple(t), 0.0) for t in tokens]
