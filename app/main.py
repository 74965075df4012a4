"""The FastAPI app: create_app(settings) builds it; the lifespan loads the model and tears it down."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from model.bundle import DEFAULT_BUNDLE, BundleError, load_bundle

from . import errors
from .engine import Engine, pick_device, set_torch_threads
from .middleware import ServiceMiddleware
from .routes import openai_api, ops, pages, respond
from .runtime import Runtime
from .settings import Settings

log = logging.getLogger(__name__)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    rt: Runtime = app.state.runtime
    s = rt.settings
    path = s.bundle or DEFAULT_BUNDLE
    threads = set_torch_threads(s.torch_threads)
    try:
        bundle = await asyncio.to_thread(load_bundle, path, pick_device(s.device))
    except BundleError as e:
        hint = "" if s.bundle else " (no bundle given: pass --bundle DIR or set DIALOG_BUNDLE)"
        log.error("cannot load the model bundle: %s%s", e, hint)
        raise BundleError(f"{e}{hint}") from None
    engine = Engine(bundle, observer=rt.metrics.observer(), **s.engine_options())  # type: ignore[arg-type]
    engine.start()
    rt.engine = engine
    log.info("loaded bundle %s (%s, sha256 %s) on %s with %d torch threads", bundle.name, path,
             bundle.sha256[:12], engine.device, threads)
    if s.warmup:
        warm = asyncio.create_task(rt.warm_up())
    else:
        rt.warmed_up = True
        rt.metrics.ready.set(1)
        warm = None
    try:
        yield
    finally:
        rt.start_draining()
        if warm is not None and not warm.done():
            warm.cancel()
        drained = await asyncio.to_thread(engine.close, s.drain_timeout_s)
        if not drained:
            log.warning("drain timeout (%g s) passed with requests still running", s.drain_timeout_s)
        log.info("stopped")


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    app = FastAPI(title="cvae-dialog", version=ops.version(), lifespan=lifespan,
                  description="Several diverse replies to a dialog context, sampled from a CVAE's latent space.",
                  docs_url=None, redoc_url=None)
    rt = Runtime(settings)
    app.state.runtime = rt
    errors.install(app)
    app.include_router(respond.router(settings))
    app.include_router(openai_api.router(settings))
    app.include_router(ops.router)
    pages.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    # Outermost: every response, errors included, gets a request id, a log line and metrics.
    app.add_middleware(ServiceMiddleware, metrics=rt.metrics, max_body_bytes=settings.max_body_bytes)
    return app
