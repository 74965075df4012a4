"""One pure-ASGI middleware for every HTTP request: request id, body-size limit, access log, metrics."""
from __future__ import annotations

import json
import logging
import re
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import encodable, is_openai_path, openai_error
from .metrics import Metrics

access_log = logging.getLogger("app.access")
_GOOD_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
ROUTES = {"/", "/respond", "/healthz", "/readyz", "/info", "/metrics", "/docs", "/openapi.json", "/redoc",
          "/v1/chat/completions", "/v1/models"}
PREFIXES = ("/static/", "/docs-assets/", "/v1/models/")
JSON_ROUTES = {"/respond", "/v1/chat/completions"}  # POST routes whose body must be declared JSON (else 415)


def route_label(path: str) -> str:
    """A bounded set of labels, so unknown paths cannot blow up the metrics' cardinality."""
    if path in ROUTES:
        return path
    for p in PREFIXES:
        if path.startswith(p):
            return p + "*"
    return "other"


class ServiceMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics, max_body_bytes: int):
        self.app = app
        self.metrics = metrics
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        incoming = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = incoming if _GOOD_ID.fullmatch(incoming) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        status = 500
        route = route_label(scope["path"])

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        self.metrics.in_flight.inc()
        self.metrics.active += 1
        try:
            body_receive = await self._read_body(scope, headers, receive, send_with_id, rid)
            if body_receive is not None:
                await self.app(scope, body_receive, send_with_id)
        finally:
            dt = time.perf_counter() - t0
            self.metrics.in_flight.dec()
            self.metrics.active -= 1
            self.metrics.requests.labels(route, scope["method"], str(status)).inc()
            self.metrics.latency.labels(route).observe(dt)
            access_log.info("%s %s %s %d %.1fms", rid, scope["method"], scope["path"], status, 1000 * dt)

    async def _read_body(self, scope: Scope, headers: dict[bytes, bytes], receive: Receive, send: Send,
                         rid: str) -> Receive | None:
        """Read the whole body (bodies are small) so an oversized one is refused with 413 before any
        parsing; returns a receive that replays it, or None when a response was already sent."""
        if scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            return receive
        ctype = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if scope["path"] in JSON_ROUTES and ctype != b"application/json":
            await _send_error(send, scope, 415, "send the body as JSON with 'Content-Type: application/json'", rid)
            return None
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _send_error(send, scope, 400, "invalid Content-Length", rid)
                return None
            if int(length) > self.max_body_bytes:
                await self._too_large(send, scope, rid)
                return None
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(send, scope, rid)
                return None
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    async def _too_large(self, send: Send, scope: Scope, rid: str) -> None:
        await _send_error(send, scope, 413, f"request body exceeds {self.max_body_bytes} bytes", rid)


async def _send_error(send: Send, scope: Scope, status: int, message: str, rid: str) -> None:
    """An error answered before the app runs, in the shape of the route's API (OpenAI's on /v1/...)."""
    if is_openai_path(scope["path"]):
        await _send_json(send, status, openai_error(status, message))
    else:
        await _send_json(send, status, {"detail": message, "request_id": rid})


async def _send_json(send: Send, status: int, content: Any) -> None:
    body = json.dumps(encodable(content), ensure_ascii=False).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
