"""Error bodies: FastAPI's usual 422 shape, but never echoing a huge input back; on the OpenAI-compatible
routes (/v1/...), OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` with 400 for invalid input.

Every error body goes through :func:`encodable`: JSON lets a client send a lone surrogate (``"\\ud800"``), which
a Python string holds but UTF-8 cannot encode, and an error that echoes it must still render."""
from __future__ import annotations

import logging
import math
import sys
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MAX_ERRORS = 10
MAX_STR = 80
MAX_ITEMS = 5
MAX_MESSAGE = 1000


def encodable(value: Any) -> Any:
    """``value`` with every string (dict keys included, at any depth) made encodable as UTF-8: a lone
    surrogate becomes its escape, written out (``\\ud800``), so the reader sees what was sent."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode("utf-8")
        return value
    if isinstance(value, (list, tuple)):
        out = [encodable(v) for v in value]
        return out if isinstance(value, list) else tuple(out)
    if isinstance(value, dict):
        return {encodable(k): encodable(v) for k, v in value.items()}
    return value


class ErrorResponse(JSONResponse):
    """A JSONResponse that can render whatever a client sent, however it echoes it back."""

    def render(self, content: Any) -> bytes:
        return super().render(encodable(content))


def shrink(value: Any, depth: int = 0) -> Any:
    """A small stand-in for ``value``: long strings and numbers cut, long lists and dicts trimmed, nesting
    bounded."""
    if isinstance(value, str):
        return value if len(value) <= MAX_STR else f"{value[:MAX_STR]}... [{len(value)} characters]"
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 3 * MAX_STR:
        digits = str(abs(value))  # at most the decoder's limit on digits (sys.get_int_max_str_digits)
        return f"{'-' if value < 0 else ''}{digits[:20]}... [{len(digits)} digits]"
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
        kept = {str(k)[:MAX_STR]: shrink(v, depth + 1) for k, v in items[:MAX_ITEMS]}
        if len(items) > MAX_ITEMS:
            kept["..."] = f"[{len(items)} keys]"
        return kept
    return value


def validation_body(errors: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    for e in errors[:MAX_ERRORS]:
        e = dict(e)
        e["loc"] = [shrink(x) for x in e.get("loc", ())]  # a field name is as long as the client made it
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


# ----- OpenAI's error shape, on the /v1 routes ------------------------------------------------------------

OPENAI_PREFIX = "/v1/"
# status -> (type, code) when the raiser names no code; clients act on the status (the openai package maps
# it to its exception classes), the type and code say more to a reader.
OPENAI_STATUS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", "not_ready"),
    504: ("server_error", "timeout"),
}
# pydantic error type -> code of a 400 for invalid input
_VALIDATION_CODES = {"missing": "missing_required_parameter", "extra_forbidden": "unknown_parameter",
                     "json_invalid": "invalid_json", "unsupported_value": "unsupported_value"}


def is_openai_path(path: str) -> bool:
    return path == "/v1" or path.startswith(OPENAI_PREFIX)


class OpenAIError(Exception):
    """An error of the /v1 routes that names its parameter or code (an unknown model, an unusable message)."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code = OPENAI_STATUS.get(status, ("server_error" if status >= 500 else "invalid_request_error",
                                                    None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}


def openai_validation_error(errors: list[dict[str, Any]]) -> OpenAIError:
    """The first of pydantic's errors as a 400: ``param`` the dotted path in the body (``messages.1.content``)."""
    if not errors:
        return OpenAIError(400, "invalid request")
    e = errors[0]
    loc = [str(shrink(x)) for x in e.get("loc", ())]  # a field name is as long as the client made it
    if loc[:1] == ["body"]:
        loc = loc[1:]
    kind = str(e.get("type", ""))
    if kind == "json_invalid":
        loc = []  # the location is a character offset, not a parameter
    param = ".".join(loc) or None
    code = _VALIDATION_CODES.get(kind) or ("invalid_type" if kind.endswith("_type") else "invalid_value")
    msg = str(e.get("msg", "invalid value")).removeprefix("Value error, ")[:MAX_MESSAGE]
    if kind == "extra_forbidden":
        msg = f"unknown parameter '{param}' (this server does not support it)"
    elif param:
        msg = f"{param}: {msg}"
    else:
        msg = f"request body: {msg}"
    return OpenAIError(400, msg, param=param, code=code)


def _openai_response(e: OpenAIError) -> JSONResponse:
    return ErrorResponse(openai_error(e.status, e.message, e.param, e.code), status_code=e.status,
                         headers=dict(e.headers) if e.headers else None)


UNDECODABLE_BODY = "There was an error parsing the body"  # FastAPI's detail when reading the JSON body raises


def undecodable_reason(exc: BaseException) -> str:
    """What was wrong with a body FastAPI could not read as JSON (its 400 is raised from the decoder's error)."""
    cause = exc.__cause__
    if isinstance(cause, RecursionError):
        return "the JSON is nested too deeply"  # valid JSON, deeper than Python's decoder recurses
    if isinstance(cause, UnicodeError):
        return "the body is not UTF-8 JSON"
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        # valid JSON, but Python reads no integer of more digits (a guard against quadratic-time conversion)
        return f"a number in it has more than {sys.get_int_max_str_digits()} digits"
    return "the body cannot be read as JSON"


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        if is_openai_path(request.url.path):
            return _openai_response(openai_validation_error(list(exc.errors())))
        return ErrorResponse(validation_body(list(exc.errors())), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Any:
        if exc.status_code == 400 and exc.detail == UNDECODABLE_BODY:
            # FastAPI's own 400 for a body json.loads raised on with something other than a JSONDecodeError
            # (not UTF-8, nested too deeply): the same answer as any other body that is not JSON (422 on
            # /respond, 400 invalid_json on /v1), saying which
            reason = undecodable_reason(exc)
            return await _validation(request, RequestValidationError([{
                "type": "json_invalid", "loc": ("body", 0), "msg": f"JSON decode error: {reason}",
                "input": {}, "ctx": {"error": reason}}]))
        if not is_openai_path(request.url.path):
            return await http_exception_handler(
                request, StarletteHTTPException(exc.status_code, encodable(exc.detail), exc.headers))
        message = str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"unknown URL: {request.method} {request.url.path}"
        elif exc.status_code == 405 and message == "Method Not Allowed":
            message = f"method {request.method} is not allowed on {request.url.path}"
        return _openai_response(OpenAIError(exc.status_code, message, headers=exc.headers))

    @app.exception_handler(OpenAIError)
    async def _openai(request: Request, exc: OpenAIError) -> JSONResponse:
        return _openai_response(exc)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Last resort (Starlette's outermost middleware, which still logs the traceback and re-raises): the
        # client gets the API's JSON shape and the request id to report, not a plain-text 500.
        rid = getattr(request.state, "request_id", None)
        message = f"internal error (request id {rid})" if rid else "internal error"
        if is_openai_path(request.url.path):
            return _openai_response(OpenAIError(500, message))
        return ErrorResponse({"detail": message}, status_code=500)
