"""Operations: liveness, readiness, model info, metrics."""
from __future__ import annotations

from importlib import metadata

from fastapi import APIRouter, HTTPException
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..runtime import RuntimeDep
from ..schemas import InfoResponse, Limits, ModelRef, Status

router = APIRouter(tags=["operations"])


def version() -> str:
    try:
        return metadata.version("cvae-dialog")
    except metadata.PackageNotFoundError:
        return "0.1.0"


@router.get("/healthz", response_model=Status)
def healthz() -> Status:
    """Liveness: the process answers."""
    return Status(status="ok")


@router.get("/readyz", response_model=Status, responses={503: {"model": Status}})
def readyz(rt: RuntimeDep) -> Response:
    """Readiness: 200 once the model is loaded and warmed up; 503 before that and while draining."""
    if rt.ready:
        return JSONResponse(Status(status="ready").model_dump())
    return JSONResponse(Status(status="not ready", detail=rt.not_ready_reason()).model_dump(),
                        status_code=503, headers={"Retry-After": "1"})


@router.get("/info", response_model=InfoResponse, responses={503: {"description": "model not loaded yet"}})
def info(rt: RuntimeDep) -> InfoResponse:
    """The served model (config, vocabulary, device) and this deployment's limits."""
    engine = rt.engine
    if engine is None:
        raise HTTPException(503, "not ready: loading the model", headers={"Retry-After": "1"})
    s = rt.settings
    i = engine.info()
    return InfoResponse(
        version=version(), model=ModelRef(name=i["name"], sha256=i["sha256"]), text_style=i["text_style"],
        config=i["config"], vocab_size=i["vocab_size"], device=i["device"], torch_threads=i["torch_threads"],
        limits=Limits(max_turns=s.max_turns, max_turn_chars=s.max_turn_chars, max_n=s.max_n,
                      max_tokens=engine.max_tokens, max_body_bytes=s.max_body_bytes,
                      request_timeout_s=s.request_timeout_s),
        batching={"max_batch_rows": s.max_batch_rows, "max_wait_ms": s.max_wait_ms, "queue_size": s.queue_size})


@router.get("/metrics", response_class=Response)
def metrics(rt: RuntimeDep) -> Response:
    """Prometheus text format."""
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)
