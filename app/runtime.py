"""What the app holds while it runs: settings, metrics and the engine, plus readiness and draining."""
from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from .engine import Engine
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


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
