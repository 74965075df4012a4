"""The reply pipeline: a dialog context in, n replies out, in small pieces that the service (app.engine), the
CLI and the offline evaluation (model.generate) call in the same order, so that a figure measured offline
describes what the service says (tests/app/test_parity.py pins it).

    prepare  normalise and tokenise the turns; check the request against the Limits    ReplyPipeline.prepare
    encode   the condition c and the prior p(z | c) = N(mu, diag(sigma^2)) of each context       .encode
             (model.inputs.condition)
    latents  z_i = mu + tau * sigma * eps_i, eps_i ~ N(0, I) drawn from the row's own seed          .rows
    decode   lexicon-constrained decoding of rows sharing decoding options; the anti-LM term of     .decode
             the rows to be reranked (model.rerank.AntiLM)
    collect  detokenise; drop empty replies and (with dedupe) repeated ones, and draw            ReplyJob.end_round
             more rows in their place for a bounded number of rounds
    choose   reranked: n of the candidates by relevance and diversity (model.rerank); else the n     ReplyJob.result
             samples by score; best first either way

Token streaming (``GenerationRequest.on_text``, reranking off): each reply's text goes to the callback as it is
decoded, in :class:`TextDelta` pieces (what :func:`model.text.settled_prefix` says is final), the choices
numbered in the order they start writing; a row whose reply comes out empty never starts a choice and is
replaced as usual, repeated replies are kept (a choice already sent is never withdrawn), and the result lists
the replies in choice order. With reranking the choice needs every candidate, so nothing streams.

Seeds: row i of a request with seed s uses s_i = (s + i) mod (2**63 - 1) for its latent noise and its
sampling uniforms (model.decoding), so a reply depends only on (context, s_i) and carries s_i as its seed: the
same request with that seed, n = 1 and reranking off replays it. A caller that batches rows of several
requests into one decode call (the service) gets the same values up to the rounding of batched products.
"""
from __future__ import annotations

import math
import secrets
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import torch

from . import decoding
from . import rerank as rr
from .bundle import Bundle
from .config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from .inputs import Context, condition, serving_context
from .lexicon import PieceConstraint
from .text import detokenize, normalize, reply_key, settled_prefix

SEED_MOD = decoding.SEED_MOD
log = logging.getLogger(__name__)


class InputError(ValueError):
    """A request the pipeline cannot serve; ``loc`` points at the field (as in a 422 body), ``value`` is what
    was given there."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, value: Any = None):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg
        self.value = value


@dataclass(frozen=True)
class Limits:
    """What one request may ask; the service's settings of the same names (app.settings), and the one place
    the checks are made for every caller (:meth:`ReplyPipeline.prepare`)."""

    max_turns: int = 20  # context turns
    max_turn_chars: int = 1000  # characters of one turn
    max_n: int = 16  # replies
    max_tokens: int = 64  # tokens of one reply (also capped by the model's max_decode_len)
    max_candidates: int = 64  # rows decoded when reranking


@dataclass(frozen=True)
class ReplySettings:
    """How replies are made when a request does not say (defaults chosen by blind rating, docs/quality.md)."""

    lexicon: bool = True  # decode only words of the bundle's decoding lexicon, when it has one
    rerank: bool = True
    candidates_per_reply: int = rr.DEFAULT_CANDIDATES_PER_REPLY
    latent_temperature: float = rr.DEFAULT_LATENT_TEMPERATURE
    mmi_weight: float = rr.DEFAULT_MMI_WEIGHT
    diversity: float = rr.DEFAULT_DIVERSITY
    anti_lm: str = "probes"
    coherence_weight: float = 0.0  # the response-selection head's term (model.rerank); needs a model with one
    dedupe_rounds: int = 3  # extra rounds of rows drawn to replace empty and repeated replies


@dataclass(frozen=True)
class GenerationRequest:
    context: Sequence[str]  # oldest turn first; the last turn is the other party's
    n: int = 5
    seed: int | None = None  # None: a random one, returned in the result
    latent_temperature: float | None = None  # scales the prior's std; 0 gives the prior mean; None: the default
    latents: Sequence[Sequence[float]] | None = None  # decode these codes instead of sampling (one reply each)
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float | None = None  # sampling only; None: 1
    top_k: int | None = None  # sampling only; None: 0 (every token)
    top_p: float | None = None  # sampling only; None: 1 (every token)
    max_tokens: int | None = None  # None: the limit
    dedupe: bool = True
    return_latents: bool = False
    rerank: bool | None = None  # None: the settings' rerank
    candidates: int | None = None  # rows decoded when reranking; None: candidates_per_reply x n
    # reranking off: each reply's text as it is decoded (module docstring); called on the decoding thread
    on_text: Callable[["TextDelta"], None] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class TextDelta:
    """A piece of a streamed reply: ``text`` extends choice ``choice``; the choice's last piece carries its
    finished ``reply`` (its whole text is then the pieces joined)."""

    choice: int
    text: str
    reply: "Reply | None" = None


@dataclass
class Reply:
    text: str
    score: float  # mean log-probability per scored token (</s> included when emitted), nats
    tokens: int  # tokens generated, without </s>
    finish_reason: str  # "eos" or "length"
    sample_index: int
    seed: int | None  # None for a reply decoded from a given latent code (no seed replays it)
    latent: list[float] | None = None
    ranking: dict[str, float] | None = None  # model.rerank.Scored and the MMR value, when reranked
    logprob_null: float | None = field(default=None, repr=False)  # log p(r) of the reranker, nats
    selection: float | None = field(default=None, repr=False)  # s(c, r) of the response-selection head
    n_scored: int = field(default=0, repr=False)


@dataclass
class Result:
    replies: list[Reply]
    n_requested: int
    n_returned: int
    duplicates_dropped: int  # repeated replies dropped (with dedupe)
    empty_dropped: int  # empty replies dropped (always: an empty reply is never returned)
    seed: int
    prompt_tokens: int  # context pieces the model reads, with their start and end tokens
    candidates: int = 0  # rows decoded for this request
    reranked: bool = False
    timing_ms: dict[str, float] = field(default_factory=dict)  # filled by the caller that timed it
    # with return_latents: the prior N(mean, diag(std^2)) of the context (Z values each) and the latent
    # temperature of the draws (None when the request gave its latents)
    prior: dict[str, Any] | None = None


class DecodeKey(NamedTuple):
    """Decoding options: rows with equal keys can share a decode call."""

    strategy: str
    temperature: float
    top_k: int
    top_p: float
    max_len: int


class Row(NamedTuple):
    """One row to decode: row ``sample`` of ``job``, its latent code (Z,) and sampling uniforms (max_len,)."""

    job: "ReplyJob"
    sample: int
    z: torch.Tensor
    u: torch.Tensor | None


@dataclass(eq=False)
class ReplyJob:
    """One request on its way through the pipeline: its rows, the rounds that replace empty and repeated
    replies, and the choice at the end."""

    req: GenerationRequest
    turn_ids: list[list[int]]
    context: Context  # what the model reads of the dialog (model.inputs.serving_context)
    seed: int
    n: int
    key: DecodeKey
    rerank: bool
    latent_temperature: float | None  # None with given latents
    prompt_tokens: int
    pending: list[int] = field(default_factory=list)  # row indices to decode in the next step
    next_index: int = 0
    rounds_left: int = 0
    replies: list[Reply] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    empty: int = 0
    done: bool = False
    cond: torch.Tensor | None = None  # (1, cond_dim)
    mu: torch.Tensor | None = None  # (1, Z)
    std: torch.Tensor | None = None  # (1, Z)
    choice_of: dict[int, int] = field(default_factory=dict)  # token streaming: row index -> its choice

    @property
    def pending_rows(self) -> int:
        return len(self.pending)

    @property
    def streams_tokens(self) -> bool:
        return self.req.on_text is not None and not self.rerank

    def abandoned(self) -> bool:
        """Whether nobody waits for this job any more (the engine's jobs: cancelled): its rows stop at the next
        decode step."""
        return False

    def row_seed(self, index: int) -> int:
        return (self.seed + index) % SEED_MOD

    def end_round(self, style: str) -> bool:
        """Keep the first of each distinct non-empty reply of this round (by row index); schedule more rows
        for what is missing, or finish. Returns True when the job is done."""
        before = len(self.seen)  # replies kept in earlier rounds (each added one key), then this round's
        kept, fresh = [], sorted(self.replies[before:], key=lambda r: r.sample_index)
        for r in fresh:
            k = reply_key(r.text, style)
            if not k:  # an empty reply is never a reply
                self.empty += 1
            elif self.req.dedupe and not self.streams_tokens and k in self.seen:
                self.duplicates += 1
            else:
                self.seen.add(k if self.req.dedupe and not self.streams_tokens else f"{k}\x00{r.sample_index}")
                kept.append(r)
        self.replies = self.replies[:before] + kept
        usable = sum(r.finish_reason == "eos" for r in self.replies) if self.rerank else len(self.replies)
        missing = self.n - usable
        if missing > 0 and self.rounds_left > 0:
            self.rounds_left -= 1
            self.pending = list(range(self.next_index, self.next_index + missing))
            self.next_index += missing
            return False
        self.done = True
        return True

    def result(self, mmi_weight: float, diversity: float, coherence_weight: float = 0.0) -> Result:
        """The n replies, best first: reranked, in the order maximal marginal relevance picks them
        (model.rerank.picks; ``ranking.mmr`` is the value each was picked with); else the samples by score."""
        if self.rerank:
            coherence: list[float | None] = [None] * len(self.replies)
            if coherence_weight:
                coherence = list(rr.coherence_logprobs([r.selection if r.selection is not None else -math.inf
                                                        for r in self.replies]))
            scored = [rr.score(r.score * max(r.n_scored, 1), r.logprob_null or 0.0, r.n_scored,
                               r.finish_reason == "eos", mmi_weight, c, coherence_weight)
                      for r, c in zip(self.replies, coherence)]
            replies = []
            for i, mmr in rr.picks([r.text for r in self.replies], scored, self.n, diversity):
                r, sc = self.replies[i], scored[i]
                r.ranking = {"likelihood": sc.likelihood, "anti_lm": sc.anti_lm, "rank": sc.rank, "mmr": mmr}
                if sc.coherence is not None:
                    r.ranking["coherence"] = sc.coherence
                replies.append(r)
        elif self.streams_tokens:
            replies = sorted(self.replies, key=lambda r: self.choice_of[r.sample_index])[:self.n]
        else:
            replies = sorted(self.replies, key=lambda r: (-r.score, r.sample_index))[:self.n]
        result = Result(replies=replies, n_requested=self.n, n_returned=len(replies),
                        duplicates_dropped=self.duplicates, empty_dropped=self.empty, seed=self.seed,
                        prompt_tokens=self.prompt_tokens, candidates=self.next_index, reranked=self.rerank)
        if self.req.return_latents and self.mu is not None and self.std is not None:
            result.prior = {"mean": self.mu[0].float().cpu().tolist(), "std": self.std[0].float().cpu().tolist(),
                            "latent_temperature": self.latent_temperature}
        return result


class _TextStreams:
    """The step hook of one decode call (model.decoding.decode): stops the rows of abandoned jobs, and sends
    the text of the rows of token-streaming jobs as it settles (module docstring)."""

    def __init__(self, rows: Sequence[Row], bundle: Bundle):
        self.jobs = list(dict.fromkeys(r.job for r in rows))
        self.job_of = [self.jobs.index(r.job) for r in rows] if len(self.jobs) > 1 else [0] * len(rows)
        self.rows = rows
        self.tok, self.style = bundle.tokenizer, bundle.text_style
        self.tokens: dict[int, list[int]] = {j: [] for j, r in enumerate(rows) if r.job.streams_tokens}
        self.sent: dict[int, str] = dict.fromkeys(self.tokens, "")

    def step(self, running: list[int], toks: list[int]) -> set[int]:
        gone = {k for k, job in enumerate(self.jobs) if job.abandoned()}
        stop = {j for j in running if self.job_of[j] in gone} if gone else set()
        for j, t in zip(running, toks):
            if j in self.tokens and j not in stop:
                if t != EOS_ID:
                    self.tokens[j].append(t)
                text = detokenize(self.tok.decode(self.tokens[j]), self.style)
                # at </s> the whole text, at once: the finish (with the score) follows when the call ends
                self._send(j, text if t == EOS_ID else settled_prefix(text, self.style))
        return stop

    def _send(self, j: int, text: str, reply: Reply | None = None) -> None:
        job, idx, sent = self.rows[j].job, self.rows[j].sample, self.sent[j]
        if idx not in job.choice_of:
            if not reply_key(text, self.style):  # nothing to say yet (or ever: an empty reply is replaced)
                return
            job.choice_of[idx] = len(job.choice_of)
        if not text.startswith(sent):  # never, by settled_prefix's contract (tests/model/test_text.py)
            log.error("streamed text %r is not a prefix of %r; sending no more of it", sent, text)
            text = sent
        self.sent[j] = text
        if len(text) > len(sent) or reply is not None:
            assert job.req.on_text is not None
            job.req.on_text(TextDelta(job.choice_of[idx], text[len(sent):], reply))

    def finish(self, j: int, reply: Reply) -> None:
        self._send(j, reply.text, reply)


def _sampling_only(req: GenerationRequest) -> list[str]:
    return [k for k in ("temperature", "top_k", "top_p") if getattr(req, k) is not None]


class ReplyPipeline:
    """The pipeline of one bundle: the banned ids, the lexicon constraint and the anti-LM built once."""

    def __init__(self, bundle: Bundle, settings: ReplySettings | None = None, limits: Limits | None = None):
        self.bundle = bundle
        self.settings = settings or ReplySettings()
        self.limits = limits or Limits()
        s, cfg, tok = self.settings, bundle.config, bundle.tokenizer
        self.max_tokens = min(self.limits.max_tokens, cfg.max_decode_len)
        self.banned = (PAD_ID, UNK_ID, BOS_ID, tok.dialog_start_id)
        self.constraint = (PieceConstraint(bundle.lexicon, tok.sp, self.banned)
                           if s.lexicon and bundle.lexicon is not None else None)
        self.anti_lm = rr.AntiLM(bundle, s.anti_lm)  # raises rr.RerankError when the bundle lacks it
        if s.coherence_weight and not cfg.rs_dim:
            raise rr.RerankError(f"{bundle.path}: a coherence weight needs a model with a response-selection head "
                                 "(model.rs_dim > 0, trained with train.rs_weight > 0); this one has none")

    # ----- prepare (no torch, but CPU work: servers call it off their event loop) ---------------------------
    def prepare(self, req: GenerationRequest, job_type: type[ReplyJob] = ReplyJob) -> ReplyJob:
        """Check ``req`` against the limits and tokenise it; raises InputError naming the field."""
        lim, s, style = self.limits, self.settings, self.bundle.text_style
        if not req.context:
            raise InputError(("context",), "context needs at least one turn")
        if len(req.context) > lim.max_turns:
            raise InputError(("context",), f"context has {len(req.context)} turns; at most {lim.max_turns}",
                             len(req.context))
        turns = []
        for i, t in enumerate(req.context):
            if len(t) > lim.max_turn_chars:
                raise InputError(("context", i), f"a turn has at most {lim.max_turn_chars} characters "
                                 f"(this one has {len(t)})", t)
            norm = normalize(t, style)
            if not norm:
                raise InputError(("context", i), "turn is empty after normalisation", t)
            turns.append(norm)
        max_len = self.max_tokens if req.max_tokens is None else req.max_tokens
        if not 1 <= max_len <= self.max_tokens:
            raise InputError(("max_tokens",), f"max_tokens must be between 1 and {self.max_tokens} "
                             f"(the model decodes at most {self.bundle.config.max_decode_len})", req.max_tokens)
        if req.strategy == "greedy":
            extra = _sampling_only(req)
            if extra:
                raise InputError((extra[0],), f"{extra[0]} applies to strategy 'sample' only; greedy decoding "
                                 "would ignore it", getattr(req, extra[0]))
            key = DecodeKey("greedy", 1.0, 0, 1.0, max_len)
        elif req.strategy == "sample":
            temp = 1.0 if req.temperature is None else req.temperature
            k = 0 if req.top_k is None else req.top_k
            p = 1.0 if req.top_p is None else req.top_p
            if not (math.isfinite(temp) and temp > 0):
                raise InputError(("temperature",), "temperature must be above 0 (greedy decoding is "
                                 "strategy 'greedy')", req.temperature)
            if k < 0:
                raise InputError(("top_k",), "top_k must be 0 (every token) or more", req.top_k)
            if not (math.isfinite(p) and 0 < p <= 1):
                raise InputError(("top_p",), "top_p must be above 0 and at most 1", req.top_p)
            key = DecodeKey("sample", float(temp), int(k), float(p), max_len)
        else:
            raise InputError(("strategy",), "strategy must be 'greedy' or 'sample'", req.strategy)
        if req.latents is not None:
            n = len(req.latents)
            if not 1 <= n <= lim.max_n:
                raise InputError(("latents",), f"give 1 to {lim.max_n} latent codes", n)
            dim = self.bundle.config.latent_dim
            for i, z in enumerate(req.latents):
                if len(z) != dim:
                    raise InputError(("latents", i), f"a latent code has {dim} values, this one {len(z)}",
                                     list(z))
                if not all(math.isfinite(v) for v in z):
                    raise InputError(("latents", i), "latent values must be finite")
            for name in ("latent_temperature", "candidates"):
                if getattr(req, name) is not None:
                    raise InputError((name,), f"{name} applies to sampled latent codes; given latents "
                                     "are decoded as they are", getattr(req, name))
            if req.rerank:
                raise InputError(("rerank",), "given latents are decoded one reply each, not reranked: "
                                 "leave rerank out or false", req.rerank)
            if req.seed is not None and req.strategy == "greedy":
                raise InputError(("seed",), "a seed draws latent codes and sampling noise; given latents decoded "
                                 "greedily use neither", req.seed)
        else:
            n = req.n
            if not 1 <= n <= lim.max_n:
                raise InputError(("n",), f"n must be between 1 and {lim.max_n}", n)
        do_rerank = (s.rerank if req.rerank is None else bool(req.rerank)) and req.latents is None
        rows = n
        if do_rerank:
            rows = req.candidates if req.candidates is not None else min(n * s.candidates_per_reply,
                                                                           lim.max_candidates)
            if not n <= rows <= lim.max_candidates:
                raise InputError(("candidates",), f"candidates must be between n ({n}) and {lim.max_candidates}",
                                 req.candidates)
        elif req.candidates is not None:
            raise InputError(("candidates",), "candidates applies when reranking; with rerank false the "
                             "service decodes n samples", req.candidates)
        seed = secrets.randbelow(SEED_MOD) if req.seed is None else int(req.seed) % SEED_MOD
        tok, cfg = self.bundle.tokenizer, self.bundle.config
        turn_ids = tok.encode_batch(turns)
        context = serving_context(turn_ids, tok.dialog_start_id, cfg.max_context_turns, cfg.max_utt_len)
        tau = None if req.latents is not None else (
            s.latent_temperature if req.latent_temperature is None else req.latent_temperature)
        job = job_type(req=req, turn_ids=turn_ids, context=context, seed=seed, n=n, key=key, rerank=do_rerank,
                       latent_temperature=tau, prompt_tokens=sum(len(t) for t in context[0]))
        job.pending = list(range(rows))
        job.next_index = rows
        # redraw rounds: when fewer than n usable replies are left after dropping empty ones (always: one is never
        # returned) and repeated ones (with dedupe), new rows are drawn for the missing, at most this many times
        job.rounds_left = s.dedupe_rounds if req.latents is None else 0
        return job

    # ----- torch work ---------------------------------------------------------------------------------------
    @torch.inference_mode()
    def encode(self, jobs: Sequence[ReplyJob]) -> None:
        """The condition and the prior of each job's context, in one call."""
        cond, mu, std = condition(self.bundle.model, [j.context for j in jobs])
        for i, job in enumerate(jobs):
            job.cond, job.mu, job.std = cond[i:i + 1], mu[i:i + 1], std[i:i + 1]

    @torch.inference_mode()
    def rows(self, job: ReplyJob) -> list[Row]:
        """The job's pending rows with their latent codes and, when sampling, their uniforms; clears pending."""
        idx, job.pending = job.pending, []
        seeds = [job.row_seed(i) for i in idx]
        device = self.bundle.device
        if job.req.latents is not None:
            z = torch.tensor([list(job.req.latents[i]) for i in idx], dtype=torch.float32, device=device)
        else:
            assert job.mu is not None and job.std is not None and job.latent_temperature is not None
            eps = decoding.latent_noise(seeds, self.bundle.config.latent_dim).to(device)  # (k, Z)
            z = job.mu + job.latent_temperature * job.std * eps
        u = decoding.sampling_uniforms(seeds, job.key.max_len) if job.key.strategy == "sample" else None
        return [Row(job, i, z[j], None if u is None else u[j]) for j, i in enumerate(idx)]

    @torch.inference_mode()
    def decode(self, key: DecodeKey, rows: Sequence[Row]) -> None:
        """Decode ``rows`` (all with decoding options ``key``) in one call and add each reply to its job."""
        cond = torch.cat([r.job.cond for r in rows])  # type: ignore[misc]  # (B, cond_dim)
        z = torch.stack([r.z for r in rows])  # (B, Z)
        u = torch.stack([r.u for r in rows]) if key.strategy == "sample" else None  # type: ignore[misc]
        streams = _TextStreams(rows, self.bundle)
        out = decoding.decode(self.bundle.model, cond, z, key.max_len, strategy=key.strategy,  # type: ignore[arg-type]
                              temperature=key.temperature, top_k=key.top_k, top_p=key.top_p, uniforms=u,
                              banned=self.banned, constraint=self.constraint, step_hook=streams.step)
        live = [j for j in range(len(rows)) if out.finish_reason[j] != "cancelled"]
        if len(live) < len(rows):  # rows of abandoned jobs stopped early: nothing of theirs is kept
            rows, cond = [rows[j] for j in live], cond[live]
        out = decoding.Decoded(*([getattr(out, f)[j] for j in live]
                                 for f in ("tokens", "logprob", "n_scored", "finish_reason")))
        ranked = [j for j, r in enumerate(rows) if r.job.rerank]
        null_of = dict(zip(ranked, self.anti_lm.logprob([out.tokens[j] for j in ranked]))) if ranked else {}
        sel_of: dict[int, float] = {}
        if ranked and self.settings.coherence_weight:
            sel_of = dict(zip(ranked, self.bundle.model.coherence(cond[ranked], [out.tokens[j] for j in ranked])))
        style, tok = self.bundle.text_style, self.bundle.tokenizer
        for j, (job, idx, zrow, _) in enumerate(rows):
            reply = Reply(
                text=detokenize(tok.decode(out.tokens[j]), style), score=float(out.score[j]),
                tokens=len(out.tokens[j]), finish_reason=out.finish_reason[j], sample_index=idx,
                seed=None if job.req.latents is not None else job.row_seed(idx),
                latent=zrow.float().cpu().tolist() if job.req.return_latents else None,
                logprob_null=null_of.get(j), selection=sel_of.get(j), n_scored=out.n_scored[j])
            job.replies.append(reply)
            if job.streams_tokens:
                streams.finish(live[j], reply)

    def end_round(self, job: ReplyJob) -> bool:
        return job.end_round(self.bundle.text_style)

    def result(self, job: ReplyJob) -> Result:
        return job.result(self.settings.mmi_weight, self.settings.diversity, self.settings.coherence_weight)

    def run(self, job: ReplyJob, max_rows: int = 64) -> Result:
        """A lone request, start to end: the order of calls the service makes for one request on its own."""
        self.encode([job])
        while not job.done:
            rows = self.rows(job)
            for start in range(0, len(rows), max_rows):
                self.decode(job.key, rows[start:start + max_rows])
            self.end_round(job)
        return self.result(job)

    def respond(self, req: GenerationRequest, max_rows: int = 64) -> Result:
        return self.run(self.prepare(req), max_rows)
