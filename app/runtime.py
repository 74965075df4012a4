"""What the app holds while it runs: settings, metrics and the engine, plus readiness and draining."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .engine import Engine, EngineClosed, GenerationRequest, QueueFull, Result
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    engine: Engine | None = None
    warmed_up: bool = False
    draining: bool = False
    failure: str | None = None

    @property
    def ready(self) -> bool:
        return self.engine is not None and self.warmed_up and not self.draining and self.failure is None

    def not_ready_reason(self) -> str:
        if self.draining:
            return "draining: the server is shutting down"
        if self.failure:
            return f"failed: {self.failure}"
        if self.engine is None:
            return "loading the model"
        return "warming up"

    def start_draining(self) -> None:
        if not self.draining:
            log.info("draining: readiness is now 503 and new requests are refused")
        self.draining = True
        self.metrics.ready.set(0)

    async def warm_up(self) -> None:
        assert self.engine is not None
        try:
            result = await asyncio.to_thread(self.engine.warmup)
        except Exception as e:  # the service stays live but never ready; /readyz says why
            log.exception("warm-up failed")
            self.failure = f"warm-up: {e!r}"
            return
        self.warmed_up = True
        self.metrics.ready.set(1 if self.ready else 0)
        log.info("ready: warm-up took %.1f ms", result.timing_ms["total"])

    def require_engine(self) -> Engine:
        """The engine when ready for traffic, else 503."""
        if not self.ready or self.engine is None:
            raise HTTPException(503, f"not ready: {self.not_ready_reason()}", headers={"Retry-After": "1"})
        return self.engine

    def client_of(self, request: Request) -> str:
        """Who sent a request, for the batcher's per-client queues and cap: the trusted proxy's header when the
        settings name one (its first comma-separated value), else the peer address."""
        header = self.settings.client_header
        if header:
            value = request.headers.get(header, "")
            if value:
                return "h:" + value.split(",")[0].strip()[:256]
        return "p:" + (request.client.host if request.client else "")

    async def generate(self, engine: Engine, req: GenerationRequest, request_id: str, client: str = "") -> Result:
        """The request path every generating route shares, on the engine the route got from
        :meth:`require_engine`: the engine's queue, the time limit, the HTTP statuses of the engine's states
        (429 queue full, 503 not ready or draining, 504 past the time limit, 500 on a failure) and the reply
        metrics. The engine's InputError propagates: each API names the offending field in its own terms."""
        try:
            future = await engine.submit_async(req, client)  # normalising and tokenising run off this loop
        except QueueFull as e:
            self.metrics.rejected.labels(e.reason).inc()
            what = ("this client has too many requests in progress" if e.reason == "client_limit"
                    else "too many requests in progress")
            raise HTTPException(429, f"{what}; retry shortly", headers={"Retry-After": "1"}) from None
        except EngineClosed:
            raise HTTPException(503, "not ready: draining", headers={"Retry-After": "1"}) from None
        timeout = self.settings.request_timeout_s
        try:
            result = await asyncio.wait_for(asyncio.wrap_future(future), timeout)
        except asyncio.TimeoutError:
            future.cancel()
            raise HTTPException(504, f"the request exceeded its time limit of {timeout:g} s") from None
        except asyncio.CancelledError:
            future.cancel()  # the batcher skips it: no work for a request nobody waits for
            if not self.draining:
                raise
            # The drain timeout passed and the server cancels what is still running: answer 503 (retry
            # elsewhere) instead of the 500 the cancellation would otherwise become.
            raise HTTPException(503, "not ready: draining (the drain timeout passed before this request ran)",
                                headers={"Retry-After": "1"}) from None
        except EngineClosed:
            raise HTTPException(503, "not ready: draining", headers={"Retry-After": "1"}) from None
        except Exception:
            log.exception("request %s failed", request_id)
            raise HTTPException(500, f"internal error (request id {request_id})") from None
        self.metrics.replies.inc(result.n_returned)
        self.metrics.duplicates.inc(result.duplicates_dropped)
        self.metrics.empty.inc(result.empty_dropped)
        return result


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
