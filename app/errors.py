"""Error bodies: FastAPI's usual 422 shape, but never echoing a huge input back."""
from __future__ import annotations

import logging
import math
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

log = logging.getLogger(__name__)
MAX_ERRORS = 10
MAX_STR = 80
MAX_ITEMS = 5


def shrink(value: Any, depth: int = 0) -> Any:
    """A small stand-in for ``value``: long strings cut, long lists and dicts trimmed, nesting bounded."""
    if isinstance(value, str):
        return value if len(value) <= MAX_STR else f"{value[:MAX_STR]}... [{len(value)} characters]"
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN or Infinity
    if isinstance(value, (bytes, bytearray)):
        return shrink(bytes(value[: MAX_STR + 1]).decode("utf-8", "replace"), depth)
    if depth >= 3 and isinstance(value, (list, tuple, dict)):
        return f"[{type(value).__name__} of {len(value)} items]"
    if isinstance(value, (list, tuple)):
        out = [shrink(v, depth + 1) for v in value[:MAX_ITEMS]]
        if len(value) > MAX_ITEMS:
            out.append(f"... [{len(value)} items]")
        return out
    if isinstance(value, dict):
        items = list(value.items())
        out = {str(k)[:MAX_STR]: shrink(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            out["..."] = f"[{len(items)} keys]"
        return out
    return value


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    for e in errors[:MAX_ERRORS]:
        e = dict(e)
        if "input" in e:
            e["input"] = shrink(e["input"])
        e.pop("url", None)
        if "ctx" in e:
            e["ctx"] = shrink(jsonable_encoder(e["ctx"], custom_encoder={Exception: str}))
        out.append(e)
    body: dict[str, Any] = {"detail": jsonable_encoder(out, custom_encoder={Exception: str})}
    if len(errors) > MAX_ERRORS:
        body["more_errors"] = len(errors) - MAX_ERRORS
    return body


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(validation_body(list(exc.errors())), status_code=422)
