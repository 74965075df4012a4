"""The FastAPI app: create_app(settings) builds it; the lifespan loads the model and tears it down."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from model.bundle import DEFAULT_BUNDLE, BundleError, load_bundle, model_limits
from model.rerank import RerankError

from . import errors
from .engine import Engine, pick_device, set_torch_threads
from .middleware import ServiceMiddleware
from .openai_schemas import chat_request_model
from .routes import openai_api, ops, pages, respond
from .runtime import Runtime
from .schemas import request_model
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
    try:
        engine = Engine(bundle, observer=rt.metrics.observer(), **s.engine_options())  # type: ignore[arg-type]
    except RerankError as e:  # settings the bundle cannot serve: one line, as for a bundle that cannot load
        log.error("cannot serve the model bundle with these settings: %s", e)
        raise BundleError(str(e)) from None
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
    # The request bodies with this deployment's limits and the served model's (read once, before the model
    # loads), so that /docs shows them.
    limits = model_limits(settings.bundle or DEFAULT_BUNDLE)
    max_decode_len = limits["max_decode_len"] if limits else None
    respond_body, chat_body = request_model(settings, max_decode_len), chat_request_model(settings, max_decode_len)
    app.include_router(respond.router(respond_body))
    app.include_router(openai_api.router(chat_body))
    exact_integer_bounds(app, [respond_body, chat_body])
    no_422_under_v1(app)
    app.include_router(ops.router)
    pages.install(app)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
                           expose_headers=["X-Request-ID", "Retry-After"])
    # Outermost: every response, errors included, gets a request id, a log line and metrics.
    app.add_middleware(ServiceMiddleware, metrics=rt.metrics, max_body_bytes=settings.max_body_bytes)
    return app


BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")


def exact_integer_bounds(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """FastAPI's OpenAPI model holds numeric bounds as floats, which turns the seed's bound 2^63 - 2 into
    9.223372036854776e18 (2^63, outside the range): put back the exact integers of the models' own JSON schemas."""
    build = app.openapi

    def restore(ours: Any, theirs: Any) -> None:
        if isinstance(ours, dict) and isinstance(theirs, dict):
            for k, v in ours.items():
                if k in BOUNDS and isinstance(v, int) and k in theirs:
                    theirs[k] = v
                elif k in theirs:
                    restore(v, theirs[k])
        elif isinstance(ours, list) and isinstance(theirs, list):
            for a, b in zip(ours, theirs):
                restore(a, b)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for m in models:
                restore(m.model_json_schema(ref_template="#/components/schemas/{model}"),
                        schema.get("components", {}).get("schemas", {}).get(m.__name__))
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]


def no_422_under_v1(app: FastAPI) -> None:
    """FastAPI documents a 422 for every route with parameters, but /v1 answers invalid input with OpenAI's 400
    (app.errors): leave the 422 out of the /v1 routes' documented responses."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = build()
            for path, operations in schema.get("paths", {}).items():
                if errors.is_openai_path(path):
                    for operation in operations.values():
                        operation.get("responses", {}).pop("422", None)
        return app.openapi_schema  # type: ignore[return-value]

    app.openapi = openapi  # type: ignore[method-assign]
