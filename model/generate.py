"""Replies to many contexts at once, as the service makes them: for offline evaluation and the CLI.

The same pieces as the service's engine (app.engine), without its request batching: prior latent codes
from per-candidate seeds (model.decoding.latent_noise), lexicon-constrained decoding (model.lexicon), the
anti-language-model score and the maximal-marginal-relevance choice (model.rerank). Candidate i of a context
with seed s has seed s + i, as in the service.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import decoding, rerank
from .bundle import Bundle
from .config import BOS_ID, PAD_ID, UNK_ID
from .inputs import collate, serving_context
from .lexicon import PieceConstraint
from .text import detokenize, normalize, reply_key


# Contexts standing in for "any context" in the anti-language-model term: the start of a dialog and a few
# everyday turns. A reply that is likely after all of them ("What?", "That's cool", "lol") is generic.
PROBE_CONTEXTS: tuple[tuple[str, ...], ...] = (
    (),
    ("Hi, how are you?",),
    ("What did you do this weekend?",),
    ("I don't know what to think about that.",),
)


def encode_contexts(bundle: Bundle, contexts: Sequence[Sequence[str]]) -> torch.Tensor:
    """The condition c (N, cond_dim) of each context (turns, oldest first), built as the service builds it."""
    cfg, tok = bundle.config, bundle.tokenizer
    built = [serving_context(tok.encode_batch([normalize(t, bundle.text_style) for t in turns]),
                             tok.dialog_start_id, cfg.max_context_turns, cfg.max_utt_len) for turns in contexts]
    return bundle.model.encode(collate([t for t, _ in built], [f for _, f in built]).to(bundle.device))


ANTI_LM_KINDS = ("probes", "reply_lm")


class AntiLM:
    """log p(r), the reranker's anti-language-model term (model.rerank), estimated one of two ways:

    - ``probes`` (the default): log mean_k p(r | c_k, z_k) over PROBE_CONTEXTS, z_k the prior mean of each:
      one teacher-forced decoder pass over (distinct replies x probes) rows through the vocabulary projection.
    - ``reply_lm``: the bundle's bigram model of the training replies (model.replylm): table lookups, nearly
      free, but blind raters judged its choices less sensible (docs/quality.md, "A cheaper anti-LM").
    """

    def __init__(self, bundle: Bundle, kind: str = "probes"):
        if kind not in ANTI_LM_KINDS:
            raise ValueError(f"anti-LM kind must be one of {', '.join(ANTI_LM_KINDS)}, got {kind!r}")
        if kind == "reply_lm" and bundle.reply_lm is None:
            raise ValueError(f"{bundle.path}: the bundle holds no reply language model (reply_lm.safetensors); "
                             "build one with `python -m training lexicon --bundle ...` or use the probes")
        self.kind = kind
        self.reply_lm = bundle.reply_lm
        self.model = bundle.model
        if self.kind == "probes":
            with torch.inference_mode():
                self.cond = encode_contexts(bundle, PROBE_CONTEXTS)
                self.z = bundle.model.prior(self.cond)[0]  # (K, Z): the prior means

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
            lp = torch.tensor(decoding.sequence_logprob(self.model, cond, z, [list(t) for t in distinct] * K),
                              dtype=torch.float64)
            values = (torch.logsumexp(lp.view(K, B), dim=0) - math.log(K)).tolist()
        scores = dict(zip(distinct, values))
        return [scores.get(tuple(t), 0.0) for t in tokens]


@dataclass
class Generated:
    text: str
    seed: int
    finish_reason: str
    score: float  # mean log p per scored token
    ranking: rerank.Scored | None


class Generator:
    def __init__(self, bundle: Bundle, lexicon: bool = True, rerank_on: bool = True,
                 candidates_per_reply: int = rerank.DEFAULT_CANDIDATES_PER_REPLY,
                 mmi_weight: float = rerank.DEFAULT_MMI_WEIGHT, diversity: float = rerank.DEFAULT_DIVERSITY,
                 latent_temperature: float = rerank.DEFAULT_LATENT_TEMPERATURE, batch_rows: int = 64,
                 anti_lm: str = "probes"):
        self.bundle = bundle
        self.banned = (PAD_ID, UNK_ID, BOS_ID, bundle.tokenizer.dialog_start_id)
        self.constraint = (PieceConstraint(bundle.lexicon, bundle.tokenizer.sp, self.banned)
                           if lexicon and bundle.lexicon is not None else None)
        self.rerank_on, self.per_reply = rerank_on, candidates_per_reply
        self.mmi_weight, self.diversity = mmi_weight, diversity
        self.latent_temperature, self.batch_rows = latent_temperature, batch_rows
        self._anti_lm: AntiLM | None = AntiLM(bundle, anti_lm) if rerank_on else None

    @torch.inference_mode()
    def respond(self, contexts: Sequence[Sequence[str]], n: int, seeds: Sequence[int]) -> list[list[Generated]]:
        """n replies (best first) to each context (turns, oldest first), candidate seeds from seeds[i]."""
        b, cfg = self.bundle, self.bundle.config
        k = n * self.per_reply if self.rerank_on else n
        out: list[list[Generated]] = []
        for start in range(0, len(contexts), max(1, self.batch_rows // k)):
            chunk = contexts[start:start + max(1, self.batch_rows // k)]
            cond = encode_contexts(b, chunk)
            mu, logvar = b.model.prior(cond)
            row_seeds = [(int(seeds[start + i]) + j) % decoding.SEED_MOD for i in range(len(chunk)) for j in range(k)]
            eps = decoding.latent_noise(row_seeds, cfg.latent_dim).to(b.device)
            cond_r, mu_r, std_r = (t.repeat_interleave(k, 0) for t in (cond, mu, (0.5 * logvar).exp()))
            z = mu_r + self.latent_temperature * std_r * eps
            dec = decoding.decode(b.model, cond_r, z, cfg.max_decode_len, banned=self.banned,
                                  constraint=self.constraint)
            null = self._null_logprob(dec.tokens) if self.rerank_on else [0.0] * len(dec.tokens)
            for i in range(len(chunk)):
                rows = range(i * k, (i + 1) * k)
                out.append(self._choose(dec, null, rows, row_seeds, n))
        return out

    def _null_logprob(self, tokens: list[list[int]]) -> list[float]:
        assert self._anti_lm is not None
        return self._anti_lm.logprob(tokens)

    def _choose(self, dec: decoding.Decoded, null: list[float], rows: range, seeds: list[int],
                n: int) -> list[Generated]:
        style = self.bundle.text_style
        seen: set[str] = set()
        cands: list[tuple[int, str]] = []
        for r in rows:
            text = detokenize(self.bundle.tokenizer.decode(dec.tokens[r]), style)
            key = reply_key(text, style)
            if key and key not in seen:  # empty and repeated replies are dropped, as in the service
                seen.add(key)
                cands.append((r, text))
        if not self.rerank_on:
            cands.sort(key=lambda c: -dec.score[c[0]])
            return [Generated(t, seeds[r], dec.finish_reason[r], dec.score[r], None) for r, t in cands[:n]]
        scored = [rerank.score(dec.logprob[r], null[r], dec.n_scored[r], dec.finish_reason[r] == "eos",
                               self.mmi_weight) for r, _ in cands]
        picked = rerank.select([t for _, t in cands], scored, n, self.diversity)
        return [Generated(cands[i][1], seeds[cands[i][0]], dec.finish_reason[cands[i][0]], dec.score[cands[i][0]],
                          scored[i]) for i in picked]
