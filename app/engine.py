"""The inference engine: scheduling and batching of the reply pipeline (model.pipeline). No FastAPI here.

Each request is prepared (checked and tokenised) by model.pipeline.ReplyPipeline, then goes through the
batching thread (app.batching): each step encodes the contexts of requests new to it, decodes every pending
row of every running request, rows sharing decoding options in shared calls of at most ``max_batch_rows``,
and ends each request's round (model.pipeline.ReplyJob: empty and repeated replies are replaced by more rows
for a bounded number of rounds, then the n replies are chosen). A request alone goes through the same calls
in the same order as ReplyPipeline.run, the offline evaluation's path (tests/app/test_parity.py).

Determinism: candidate i of a request with seed s uses s_i = (s + i) mod (2**63 - 1) for both its latent
noise and its sampling uniforms, so its latent code depends only on (context, s_i). Every reply carries its
s_i as ``seed``: a request with that seed, n = 1 and reranking off replays it. Decoding is row-wise too, but
the matrix products of a decode call may round differently for different batch shapes (BLAS kernels block by
the number of rows), so bit-exact replay is guaranteed only with max_batch_rows = 1; otherwise a near-tie
between two tokens can, rarely, break the other way.

    from app.engine import Engine
    engine = Engine.from_bundle("model/pretrained/chat-cyclical")
    for r in engine.respond(["hi, how are you?"], n=5).replies:
        print(r.score, r.text)
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

from model import rerank as reranking
from model.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from model.files import pick_device
from model.pipeline import (SEED_MOD, DecodeKey, GenerationRequest, InputError, Limits, Reply, ReplyJob,
                            ReplyPipeline, ReplySettings, Result, Row, TextDelta)
from model.quantize import quantize_decoder

from .batching import Batcher, EngineClosed, Observer, QueueFull

__all__ = ["Engine", "GenerationRequest", "Reply", "Result", "TextDelta", "InputError", "QueueFull",
           "EngineClosed", "Observer", "pick_device", "SEED_MOD"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job(ReplyJob):
    """A request in the engine: the pipeline's job, with the future its caller waits on and its times."""

    future: Future[Result] = field(default_factory=Future)
    t_submit: float = 0.0
    t_start: float | None = None

    def abandoned(self) -> bool:
        return self.future.done()  # cancelled (its caller left or timed out) or failed: nobody waits for its rows


class Engine:
    """Serves one bundle. Thread-safe: requests go through one batching thread once :meth:`start` ran;
    before that (local use) :meth:`respond` runs them in the calling thread."""

    def __init__(self, bundle: Bundle, *, max_n: int = 16, max_tokens: int | None = None,
                 max_turns: int = 20, max_turn_chars: int = 1000,
                 max_batch_rows: int = 64, max_wait_ms: float = 5.0, queue_size: int = 64,
                 dedupe_rounds: int = 3, observer: Observer | None = None, quantize: str = "none",
                 lexicon: bool = True, rerank: bool = True,
                 candidates_per_reply: int = reranking.DEFAULT_CANDIDATES_PER_REPLY,
                 latent_temperature: float = reranking.DEFAULT_LATENT_TEMPERATURE,
                 max_candidates: int = 64, mmi_weight: float = reranking.DEFAULT_MMI_WEIGHT,
                 diversity: float = reranking.DEFAULT_DIVERSITY, anti_lm: str = "probes",
                 coherence_weight: float = 0.0, max_per_client: int = 0):
        if quantize != "none":
            quantize_decoder(bundle.model, quantize)  # int8 or bf16 decoder: see model.quantize
        self.quantize = quantize
        self.bundle = bundle
        self.model, self.tokenizer, self.config = bundle.model, bundle.tokenizer, bundle.config
        self.device = bundle.device
        self.pipeline = ReplyPipeline(
            bundle, ReplySettings(lexicon=lexicon, rerank=rerank, candidates_per_reply=candidates_per_reply,
                                  latent_temperature=latent_temperature, mmi_weight=mmi_weight,
                                  diversity=diversity, anti_lm=anti_lm, coherence_weight=coherence_weight,
                                  dedupe_rounds=dedupe_rounds),
            Limits(max_turns=max_turns, max_turn_chars=max_turn_chars, max_n=max_n,
                   max_tokens=max_tokens or bundle.config.max_decode_len, max_candidates=max_candidates))
        self.settings = self.pipeline.settings
        self.max_tokens = self.pipeline.max_tokens
        self.batcher = Batcher(self._step, max_batch_rows, max_wait_ms / 1000.0, queue_size, observer,
                               max_per_client=max_per_client)
        self.observer = self.batcher.observer
        self._preparer: ThreadPoolExecutor | None = None  # submit_async's thread, started with the batcher

    @classmethod
    def from_bundle(cls, path: str | Path | None = None, device: str = "auto", torch_threads: int = 0,
                    **options: Any) -> "Engine":
        """Load a bundle (default: model.bundle.DEFAULT_BUNDLE); raises model.bundle.BundleError, and
        model.rerank.RerankError when the bundle lacks the anti-LM asked for."""
        set_torch_threads(torch_threads)
        return cls(load_bundle(path or DEFAULT_BUNDLE, pick_device(device)), **options)

    @property
    def latent_temperature(self) -> float:
        return self.settings.latent_temperature

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

    def prepare(self, req: GenerationRequest) -> Job:
        """Check and tokenise a request (model.pipeline.ReplyPipeline.prepare); raises InputError."""
        return self.pipeline.prepare(req, Job)  # type: ignore[return-value]

    def submit(self, req: GenerationRequest, client: str = "") -> Future[Result]:
        """Queue a request of ``client`` for the batching thread (clients are served round-robin, see
        app.batching). Raises InputError, QueueFull or EngineClosed."""
        job = self.prepare(req)
        self.batcher.submit(job, client)
        return job.future

    async def submit_async(self, req: GenerationRequest, client: str = "") -> Future[Result]:
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
        self.batcher.submit(job, client)
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
        s = self.settings
        constraint = self.pipeline.constraint
        return {"name": self.bundle.name, "sha256": self.bundle.sha256, "text_style": self.bundle.text_style,
                "config": self.config.to_dict(), "vocab_size": self.bundle.tokenizer.vocab_size,
                "device": str(self.device), "max_tokens": self.max_tokens, "max_n": self.pipeline.limits.max_n,
                "torch_threads": torch.get_num_threads(), "quantize": self.quantize,
                "lexicon_words": len(constraint.lexicon) if constraint else 0,
                "rerank": s.rerank, "candidates_per_reply": s.candidates_per_reply,
                "latent_temperature": s.latent_temperature, "max_candidates": self.pipeline.limits.max_candidates,
                "mmi_weight": s.mmi_weight, "diversity": s.diversity, "anti_lm": self.pipeline.anti_lm.kind,
                "coherence_weight": s.coherence_weight}

    # ----- one step of the batching thread (or of the caller's thread in local use) ---------------------------
    def _step(self, jobs: list[Job]) -> None:
        """Decode every pending row of ``jobs``, rows sharing decoding options in shared calls; a failure fails
        only the requests it belongs to."""
        self._encode_new(jobs)
        groups: dict[DecodeKey, list[Row]] = {}
        for job in jobs:
            try:
                if job.cond is None:
                    self.pipeline.encode([job])
                groups.setdefault(job.key, []).extend(self.pipeline.rows(job))
            except Exception as e:
                self._fail(job, e)
        for key, rows in groups.items():
            self._decode_group(key, rows)
        for job in jobs:  # what is left: a request whose rows failed to be drawn, or had none
            if not job.done and not job.future.done() and not job.pending and self.pipeline.end_round(job):
                self._finish(job)

    def _encode_new(self, jobs: list[Job]) -> None:
        """Encode the contexts of the jobs new to this step, in one call when batching is on (a context's
        condition then rounds with the batch's shape, as decoding does); a failure leaves them to be encoded
        one by one, so that only the failing request fails."""
        new = [j for j in jobs if j.cond is None]
        now = time.monotonic()
        for job in new:
            job.t_start = now
        if len(new) < 2 or self.batcher.max_batch_rows == 1:
            return
        try:
            self.pipeline.encode(new)
        except Exception:
            for job in new:
                job.cond = None

    def _decode_group(self, key: DecodeKey, rows: list[Row]) -> None:
        """Decode ``rows`` in calls of at most max_batch_rows, the rows of requests with fewer rows first; a
        request whose rows are all decoded ends its round at once (it does not wait for others' later calls)."""
        size = self.batcher.max_batch_rows
        count: dict[Job, int] = {}
        for r in rows:
            count[cast(Job, r.job)] = count.get(cast(Job, r.job), 0) + 1
        rows = sorted(rows, key=lambda r: count[cast(Job, r.job)])  # stable: a request's rows stay in order
        for start in range(0, len(rows), size):
            chunk = [r for r in rows[start:start + size] if not cast(Job, r.job).future.done()]  # cancelled: leave
            if chunk:
                self._decode_chunk(key, chunk)
            for r in rows[start:start + size]:
                job = cast(Job, r.job)
                count[job] -= 1
                if count[job] == 0 and not job.done and not job.future.done() and not job.pending \
                        and self.pipeline.end_round(job):
                    self._finish(job)

    def _decode_chunk(self, key: DecodeKey, chunk: list[Row]) -> None:
        try:
            self.observer.batch(len(chunk))
            self.pipeline.decode(key, chunk)
        except Exception as e:
            jobs = list(dict.fromkeys(cast(Job, r.job) for r in chunk))
            if len(jobs) == 1:
                self._fail(jobs[0], e)
                return
            for job in jobs:  # isolate the failing request; the others still get their replies
                try:
                    self.pipeline.decode(key, [r for r in chunk if r.job is job])
                except Exception as e:
                    self._fail(job, e)

    def _finish(self, job: Job) -> None:
        result = self.pipeline.result(job)
        now = time.monotonic()
        start = job.t_start or job.t_submit
        result.timing_ms = {"queue": round(1000 * (start - job.t_submit), 3),
                            "compute": round(1000 * (now - start), 3), "total": round(1000 * (now - job.t_submit), 3)}
        if not job.future.done():
            try:
                job.future.set_result(result)
            except Exception:  # cancelled meanwhile (timed out)
                pass

    @staticmethod
    def _fail(job: Job, exc: BaseException) -> None:
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

