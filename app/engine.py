"""The inference engine: a dialog context in, several diverse replies out. No FastAPI here.

Per request: normalise and tokenise the context as training did, encode it once, sample the latent codes
z_i = mu + latent_temperature * sigma * eps_i from the prior p(z | c), decode all of them in batched calls
(rows of concurrent requests share calls, see app.batching) with the bundle's decoding lexicon masking
pieces that would write a non-word (model.lexicon), detokenise, and drop empty and repeated replies (drawing
more samples for a bounded number of rounds). With reranking (the default) the engine over-generates
``candidates`` rows (``candidates_per_reply`` x n unless the request says), scores each against generic
answers and picks n by maximal marginal relevance (model.rerank); without it, it decodes n rows and ranks
them by mean token log-probability. Best first either way.

Determinism: candidate i of a request with seed s uses s_i = (s + i) mod (2**63 - 1) for both its latent
noise and its sampling uniforms, so its latent code depends only on (context, s_i). Every reply carries its
s_i as ``seed``: a request with that seed, n = 1 and reranking off replays it. Decoding is row-wise too, but the matrix products of a decode call may round differently
for different batch shapes (BLAS kernels block by the number of rows), so bit-exact replay is guaranteed
only with max_batch_rows = 1; otherwise a near-tie between two tokens can, rarely, break the other way.

    from app.engine import Engine
    engine = Engine.from_bundle("model/pretrained/chat-cyclical")
    for r in engine.respond(["hi, how are you?"], n=5).replies:
        print(r.score, r.text)
"""
from __future__ import annotations

import asyncio
import logging
import math
import os
import secrets
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from model import decoding
from model import rerank as reranking
from model.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from model.config import BOS_ID, PAD_ID, UNK_ID
from model.files import pick_device
from model.generate import AntiLM
from model.inputs import collate, serving_context
from model.lexicon import PieceConstraint
from model.quantize import quantize_decoder
from model.text import detokenize, normalize, reply_key

from .batching import Batcher, EngineClosed, Observer, QueueFull

__all__ = ["Engine", "GenerationRequest", "Reply", "Result", "InputError", "QueueFull", "EngineClosed",
           "Observer", "pick_device"]

log = logging.getLogger(__name__)
SEED_MOD = decoding.SEED_MOD


class InputError(ValueError):
    """A request the model cannot serve; ``loc`` points at the field (as in a 422 body)."""

    def __init__(self, loc: tuple[str | int, ...], msg: str, value: Any = None):
        super().__init__(msg)
        self.loc = loc
        self.msg = msg
        self.value = value


@dataclass(frozen=True)
class GenerationRequest:
    context: Sequence[str]  # oldest turn first; the last turn is the other party's
    n: int = 5
    seed: int | None = None  # None: a random one, returned in the result
    latent_temperature: float | None = None  # scales the prior's std; 0 gives the prior mean; None: the engine's
    latents: Sequence[Sequence[float]] | None = None  # decode these codes instead of sampling
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    max_tokens: int | None = None  # None: the engine's limit
    dedupe: bool = True
    return_latents: bool = False
    rerank: bool | None = None  # None: the engine's setting
    candidates: int | None = None  # rows decoded when reranking; None: candidates_per_reply x n


@dataclass
class Reply:
    text: str
    score: float  # mean log-probability per scored token (</s> included when emitted), nats
    tokens: int  # tokens generated, without </s>
    finish_reason: str  # "eos" or "length"
    sample_index: int
    seed: int | None  # None for a reply decoded from a given latent code (no seed replays it)
    latent: list[float] | None = None
    ranking: dict[str, float] | None = None  # model.rerank.Scored as a dict, when reranked
    logprob_null: float | None = field(default=None, repr=False)  # log p(r) of the reranker, nats
    n_scored: int = field(default=0, repr=False)


@dataclass
class Result:
    replies: list[Reply]
    n_requested: int
    n_returned: int
    duplicates_dropped: int
    seed: int
    timing_ms: dict[str, float]
    candidates: int = 0  # rows decoded for this request
    reranked: bool = False
    # with return_latents: the prior N(mean, diag(std^2)) of the context (Z values each) and the latent
    # temperature of the draws (None when the request gave its latents)
    prior: dict[str, Any] | None = None


@dataclass(eq=False)
class _Job:
    req: GenerationRequest
    turn_ids: list[list[int]]
    seed: int
    max_len: int
    n: int
    future: Future[Result] = field(default_factory=Future)
    t_submit: float = 0.0
    t_start: float | None = None
    cond: torch.Tensor | None = None  # (1, cond_dim)
    mu: torch.Tensor | None = None  # (1, Z)
    std: torch.Tensor | None = None  # (1, Z)
    pending: list[int] = field(default_factory=list)  # sample indices to decode in the next step
    next_index: int = 0
    rounds_left: int = 0
    replies: list[Reply] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)
    duplicates: int = 0
    done: bool = False
    rerank: bool = False

    @property
    def pending_rows(self) -> int:
        return len(self.pending)

    @property
    def key(self) -> tuple[Any, ...]:
        r = self.req
        if r.strategy == "greedy":
            return ("greedy", 1.0, 0, 1.0, self.max_len)
        return ("sample", r.temperature, r.top_k, r.top_p, self.max_len)


class Engine:
    """Serves one bundle. Thread-safe: requests go through one batching thread once :meth:`start` ran;
    before that (local use) :meth:`respond` runs them in the calling thread."""

    def __init__(self, bundle: Bundle, *, max_n: int = 16, max_tokens: int | None = None,
                 max_batch_rows: int = 64, max_wait_ms: float = 5.0, queue_size: int = 64,
                 dedupe_rounds: int = 3, observer: Observer | None = None, quantize: str = "none",
                 lexicon: bool = True, rerank: bool = True,
                 candidates_per_reply: int = reranking.DEFAULT_CANDIDATES_PER_REPLY,
                 latent_temperature: float = reranking.DEFAULT_LATENT_TEMPERATURE,
                 max_candidates: int = 64, mmi_weight: float = reranking.DEFAULT_MMI_WEIGHT,
                 diversity: float = reranking.DEFAULT_DIVERSITY, anti_lm: str = "probes"):
        if quantize != "none":
            quantize_decoder(bundle.model, quantize)  # int8 decoder: see model.quantize
        self.quantize = quantize
        self.bundle = bundle
        self.model = bundle.model
        self.tokenizer = bundle.tokenizer
        self.config = bundle.config
        self.device = bundle.device
        self.max_n = max_n
        self.max_tokens = min(max_tokens or self.config.max_decode_len, self.config.max_decode_len)
        self.dedupe_rounds = dedupe_rounds
        self.banned = (PAD_ID, UNK_ID, BOS_ID, self.tokenizer.dialog_start_id)
        # The decoding lexicon (when the bundle has one and it is on): see model.lexicon.
        self.constraint = (PieceConstraint(bundle.lexicon, self.tokenizer.sp, self.banned)
                           if lexicon and bundle.lexicon is not None else None)
        self.rerank, self.candidates_per_reply = rerank, candidates_per_reply
        self.latent_temperature = latent_temperature
        self.max_candidates, self.mmi_weight, self.diversity = max_candidates, mmi_weight, diversity
        self._anti_lm = AntiLM(bundle, anti_lm)  # log p(r) of the reranker (model.generate.AntiLM)
        self.batcher = Batcher(self._step, max_batch_rows, max_wait_ms / 1000.0, queue_size, observer)
        self.observer = self.batcher.observer
        self._preparer: ThreadPoolExecutor | None = None  # submit_async's thread, started with the batcher

    @classmethod
    def from_bundle(cls, path: str | Path | None = None, device: str = "auto", torch_threads: int = 0,
                    **options: Any) -> "Engine":
        """Load a bundle (default: model.bundle.DEFAULT_BUNDLE); raises model.bundle.BundleError."""
        set_torch_threads(torch_threads)
        return cls(load_bundle(path or DEFAULT_BUNDLE, pick_device(device)), **options)

    # ----- public API -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the batching thread (the server does; local use need not)."""
        if self._preparer is None:
            self._preparer = ThreadPoolExecutor(1, thread_name_prefix="dialog-prepare")
        self.batcher.start()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop admitting requests and let admitted ones finish within ``timeout`` seconds."""
        drained = self.batcher.close(timeout)
        if self._preparer is not None:  # requests still waiting for it get EngineClosed (see submit_async)
            self._preparer.shutdown(wait=False, cancel_futures=True)
            self._preparer = None
        return drained

    @property
    def running(self) -> bool:
        return self.batcher.running

    def submit(self, req: GenerationRequest) -> Future[Result]:
        """Queue a request for the batching thread. Raises InputError, QueueFull or EngineClosed."""
        job = self.prepare(req)
        self.batcher.submit(job)
        return job.future

    async def submit_async(self, req: GenerationRequest) -> Future[Result]:
        """:meth:`submit` for a caller on an event loop: the request is prepared (normalised and tokenised,
        pure CPU work of several ms for a large context) in the engine's preparing thread, so the loop stays
        free meanwhile. Raises as :meth:`submit`; a caller cancelled while its request is prepared leaves
        nothing queued. One thread: the work holds the interpreter lock, so more threads would not run it
        faster, only take the lock from the loop more often."""
        pool = self._preparer
        if pool is None or not self.running:
            raise EngineClosed("the engine is not accepting requests")
        try:
            pending = asyncio.get_running_loop().run_in_executor(pool, self.prepare, req)
        except RuntimeError:  # the thread was shut down a moment ago: the engine is closing
            raise EngineClosed("the engine is not accepting requests") from None
        try:
            job = await pending
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # the caller was cancelled
            # close() dropped it before it was prepared (a process exits only once the thread is idle)
            raise EngineClosed("the engine stopped before this request was prepared") from None
        self.batcher.submit(job)
        return job.future

    def respond(self, context: Sequence[str] | str, n: int = 5, timeout: float | None = None,
                **options: Any) -> Result:
        """Replies to ``context`` (a list of turns, or one string); options as in :class:`GenerationRequest`."""
        turns = [context] if isinstance(context, str) else list(context)
        req = GenerationRequest(context=turns, n=n, **options)
        if self.running:
            return self.submit(req).result(timeout)
        job = self.prepare(req)
        job.t_submit = time.monotonic()
        while not job.done:
            self._step([job])
        return job.future.result()

    def warmup(self) -> Result:
        """One small request through the whole path (device kernels, tokenizer, batcher)."""
        return self.respond(["hello"], n=2, seed=0, dedupe=False, max_tokens=min(4, self.max_tokens))

    def info(self) -> dict[str, Any]:
        return {"name": self.bundle.name, "sha256": self.bundle.sha256, "text_style": self.bundle.text_style,
                "config": self.config.to_dict(), "vocab_size": self.tokenizer.vocab_size,
                "device": str(self.device), "max_tokens": self.max_tokens, "max_n": self.max_n,
                "torch_threads": torch.get_num_threads(), "quantize": self.quantize,
                "lexicon_words": len(self.constraint.lexicon) if self.constraint else 0,
                "rerank": self.rerank, "candidates_per_reply": self.candidates_per_reply,
                "latent_temperature": self.latent_temperature,
                "max_candidates": self.max_candidates, "mmi_weight": self.mmi_weight, "diversity": self.diversity,
                "anti_lm": self._anti_lm.kind}

    # ----- request preparation (no torch, but CPU work: servers call it off their event loop) --------
    def prepare(self, req: GenerationRequest) -> _Job:
        style = self.bundle.text_style
        if not req.context:
            raise InputError(("context",), "context needs at least one turn")
        turns = []
        for i, t in enumerate(req.context):
            norm = normalize(t, style)
            if not norm:
                raise InputError(("context", i), "turn is empty after normalisation", t)
            turns.append(norm)
        turn_ids = self.tokenizer.encode_batch(turns)
        max_len = self.max_tokens if req.max_tokens is None else req.max_tokens
        if not 1 <= max_len <= self.max_tokens:
            raise InputError(("max_tokens",), f"max_tokens must be between 1 and {self.max_tokens} "
                             f"(the model decodes at most {self.config.max_decode_len})", req.max_tokens)
        if req.strategy not in ("greedy", "sample"):
            raise InputError(("strategy",), "strategy must be 'greedy' or 'sample'", req.strategy)
        if req.latents is not None:
            n = len(req.latents)
            if not 1 <= n <= self.max_n:
                raise InputError(("latents",), f"give 1 to {self.max_n} latent codes")
            for i, z in enumerate(req.latents):
                if len(z) != self.config.latent_dim:
                    raise InputError(("latents", i), f"a latent code has {self.config.latent_dim} values")
                if not all(math.isfinite(v) for v in z):
                    raise InputError(("latents", i), "latent values must be finite")
        else:
            n = req.n
            if not 1 <= n <= self.max_n:
                raise InputError(("n",), f"n must be between 1 and {self.max_n}", n)
        do_rerank = (self.rerank if req.rerank is None else bool(req.rerank)) and req.latents is None
        rows = n
        if do_rerank:
            rows = req.candidates if req.candidates is not None else min(n * self.candidates_per_reply,
                                                                           self.max_candidates)
            if not n <= rows <= self.max_candidates:
                raise InputError(("candidates",), f"candidates must be between n ({n}) and {self.max_candidates}",
                                 req.candidates)
        seed = secrets.randbelow(SEED_MOD) if req.seed is None else int(req.seed) % SEED_MOD
        job = _Job(req=req, turn_ids=turn_ids, seed=seed, max_len=max_len, n=n, rerank=do_rerank)
        job.pending = list(range(rows))
        job.next_index = rows
        # redraw rounds replace duplicates (with dedupe) and empty replies (always: one is never returned)
        job.rounds_left = self.dedupe_rounds if req.latents is None else 0
        return job

    # ----- torch work (batching thread, or the caller's thread in local use) --------------------------
    def _step(self, jobs: list[_Job]) -> None:
        """Decode every pending row of ``jobs``, rows sharing decoding options in shared calls."""
        with torch.inference_mode():
            groups: dict[tuple[Any, ...], list[tuple[_Job, list[int], torch.Tensor, torch.Tensor | None]]] = {}
            self._encode_new(jobs)
            for job in jobs:
                try:
                    if job.cond is None:
                        self._encode(job)
                    z, u = self._latents(job)
                except Exception as e:
                    self._fail(job, e)
                    continue
                groups.setdefault(job.key, []).append((job, job.pending, z, u))
                job.pending = []
            for key, items in groups.items():
                self._decode_group(key, items)
        for job in jobs:
            if not job.done and not job.future.done() and not job.pending:
                self._end_round(job)

    def _encode_new(self, jobs: list[_Job]) -> None:
        """Encode the contexts of the jobs new to this step, in one call when batching is on (a context's
        condition then rounds with the batch's shape, as decoding does); a failure leaves them to
        :meth:`_encode` one by one, so that only the failing request fails."""
        new = [j for j in jobs if j.cond is None]
        now = time.monotonic()
        for job in new:
            job.t_start = now
        if len(new) < 2 or self.batcher.max_batch_rows == 1:
            return
        try:
            self._encode(*new)
        except Exception:
            for job in new:
                job.cond = None

    def _encode(self, *jobs: _Job) -> None:
        cfg = self.config
        contexts = [serving_context(job.turn_ids, self.tokenizer.dialog_start_id, cfg.max_context_turns,
                                    cfg.max_utt_len) for job in jobs]
        batch = collate([t for t, _ in contexts], [f for _, f in contexts]).to(self.device)
        cond = self.model.encode(batch)  # (J, cond_dim)
        mu, logvar = self.model.prior(cond)  # (J, Z) each
        std = (0.5 * logvar).exp()
        for i, job in enumerate(jobs):
            job.cond, job.mu, job.std = cond[i:i + 1], mu[i:i + 1], std[i:i + 1]

    def _seeds(self, job: _Job, indices: list[int]) -> list[int]:
        return [(job.seed + i) % SEED_MOD for i in indices]

    def _latents(self, job: _Job) -> tuple[torch.Tensor, torch.Tensor | None]:
        """z (k, Z) for the job's pending rows, and their sampling uniforms (k, max_len) when sampling."""
        seeds = self._seeds(job, job.pending)
        if job.req.latents is not None:
            z = torch.tensor([list(job.req.latents[i]) for i in job.pending], dtype=torch.float32,
                             device=self.device)
        else:
            assert job.mu is not None and job.std is not None
            eps = decoding.latent_noise(seeds, self.config.latent_dim).to(self.device)  # (k, Z)
            z = job.mu + self._temperature(job.req) * job.std * eps
        u = decoding.sampling_uniforms(seeds, job.max_len) if job.req.strategy == "sample" else None
        return z, u

    def _temperature(self, req: GenerationRequest) -> float:
        return self.latent_temperature if req.latent_temperature is None else req.latent_temperature

    def _decode_group(self, key: tuple[Any, ...], items: list[Any]) -> None:
        rows = [(job, idx, z[j], None if u is None else u[j])
                for job, idxs, z, u in items for j, idx in enumerate(idxs)]
        size = self.batcher.max_batch_rows
        for start in range(0, len(rows), size):
            chunk = rows[start:start + size]
            try:
                self._decode_rows(key, chunk)
            except Exception as e:
                jobs = list(dict.fromkeys(r[0] for r in chunk))
                if len(jobs) == 1:
                    self._fail(jobs[0], e)
                    continue
                for job in jobs:  # isolate the failing request; the others still get their replies
                    try:
                        self._decode_rows(key, [r for r in chunk if r[0] is job])
                    except Exception as e:
                        self._fail(job, e)

    def _decode_rows(self, key: tuple[Any, ...], rows: list[Any]) -> None:
        strategy, temperature, top_k, top_p, max_len = key
        live = [r for r in rows if not r[0].future.done()]
        if not live:
            return
        cond = torch.cat([r[0].cond for r in live])  # (B, cond_dim)
        z = torch.stack([r[2] for r in live])  # (B, Z)
        u = torch.stack([r[3] for r in live]) if strategy == "sample" else None
        self.observer.batch(len(live))
        out = decoding.decode(self.model, cond, z, max_len, strategy=strategy, temperature=temperature,
                              top_k=top_k, top_p=top_p, uniforms=u, banned=self.banned,
                              constraint=self.constraint)
        ranked = [j for j, r in enumerate(live) if r[0].rerank]
        null_of = dict(zip(ranked, self._null_logprob([out.tokens[j] for j in ranked]))) if ranked else {}
        style = self.bundle.text_style
        for j, (job, idx, zrow, _) in enumerate(live):
            text = detokenize(self.tokenizer.decode(out.tokens[j]), style)
            job.replies.append(Reply(
                text=text, score=float(out.score[j]), tokens=len(out.tokens[j]),
                finish_reason=out.finish_reason[j], sample_index=idx,
                seed=None if job.req.latents is not None else (job.seed + idx) % SEED_MOD,
                latent=zrow.float().cpu().tolist() if job.req.return_latents else None,
                logprob_null=null_of.get(j), n_scored=out.n_scored[j]))

    def _null_logprob(self, tokens: list[list[int]]) -> list[float]:
        """log p(r) of each reply: the anti-language-model term of model.rerank (model.generate.AntiLM)."""
        return self._anti_lm.logprob(tokens)

    def _end_round(self, job: _Job) -> None:
        """Keep the first of each distinct non-empty text (by sample index); draw more or finish."""
        before = len(job.seen)  # replies kept in earlier rounds, then this round's
        kept, fresh = [], sorted(job.replies[before:], key=lambda r: r.sample_index)
        for r in fresh:
            k = reply_key(r.text, self.bundle.text_style)
            if not k:  # an empty reply is never a reply
                job.duplicates += 1
            elif job.req.dedupe and k in job.seen:
                job.duplicates += 1
            else:
                job.seen.add(k if job.req.dedupe else f"{k}\x00{r.sample_index}")
                kept.append(r)
        job.replies = job.replies[:before] + kept
        usable = sum(r.finish_reason == "eos" for r in job.replies) if job.rerank else len(job.replies)
        missing = job.n - usable
        if missing > 0 and job.rounds_left > 0:
            job.rounds_left -= 1
            job.pending = list(range(job.next_index, job.next_index + missing))
            job.next_index += missing
            return
        job.done = True
        now = time.monotonic()
        if job.rerank:
            scored = [reranking.score(r.score * max(r.n_scored, 1), r.logprob_null or 0.0, r.n_scored,
                                   r.finish_reason == "eos", self.mmi_weight) for r in job.replies]
            picked = reranking.select([r.text for r in job.replies], scored, job.n, self.diversity)
            replies = []
            for i in picked:
                r, sc = job.replies[i], scored[i]
                r.ranking = {"likelihood": sc.likelihood, "anti_lm": sc.anti_lm, "rank": sc.rank}
                replies.append(r)
        else:
            replies = sorted(job.replies, key=lambda r: (-r.score, r.sample_index))[:job.n]
        start = job.t_start or job.t_submit
        result = Result(replies=replies, n_requested=job.n, n_returned=len(replies),
                        duplicates_dropped=job.duplicates, seed=job.seed,
                        timing_ms={"queue": round(1000 * (start - job.t_submit), 3),
                                   "compute": round(1000 * (now - start), 3),
                                   "total": round(1000 * (now - job.t_submit), 3)},
                        candidates=job.next_index, reranked=job.rerank)
        if job.req.return_latents and job.mu is not None and job.std is not None:
            result.prior = {"mean": job.mu[0].float().cpu().tolist(), "std": job.std[0].float().cpu().tolist(),
                            "latent_temperature": None if job.req.latents is not None else self._temperature(job.req)}
        if not job.future.done():
            try:
                job.future.set_result(result)
            except Exception:  # cancelled meanwhile (timed out)
                pass

    @staticmethod
    def _fail(job: _Job, exc: BaseException) -> None:
        job.done = True
        log.error("request failed: %r", exc)
        if not job.future.done():
            try:
                job.future.set_exception(exc)
            except Exception:
                pass


def set_torch_threads(n: int = 0) -> int:
    """Intra-op threads for torch: ``n``, or min(4, CPU cores - 1) (at least 1) when 0: one core stays free for
    the HTTP server's event loop, which otherwise fights the decode loop for it (docs/benchmarks.md: on two
    cores, one torch thread serves 1.5x the replies/s of two). Returns the number set."""
    n = n or max(1, min(4, (os.cpu_count() or 1) - 1))
    torch.set_num_threads(n)
    return n

