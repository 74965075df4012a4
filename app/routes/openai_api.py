"""OpenAI-compatible routes: POST /v1/chat/completions and GET /v1/models, over the engine's request path.

The dialog: user and assistant messages are the two parties' turns, oldest first (consecutive messages of one
role are joined into one turn, since the model's speakers alternate); the last must be the user's. System and
developer messages are not given to the model (it has no notion of instructions) and are listed in the
response's ``ignored_messages``.

Decoding (:func:`decoding_of`): OpenAI's temperature defaults to 1 (token sampling); this service's decoding,
chosen by blind rating (docs/quality.md), is greedy over latent codes sampled from the prior and reranked. So:

    temperature absent, top_p absent or 1   the service's decoding (greedy tokens)
    temperature 0, or top_p 0               greedy tokens
    temperature t in (0, 2]                 token sampling at t, nucleus top_p (absent: 1)
    top_p p in (0, 1), temperature absent   token sampling at 1 (OpenAI's default), nucleus p

Either way the n choices differ through their latent codes (latent_temperature, an extension) and reranking.

Streaming (``stream: true``): the same completion as chat.completion.chunk events. With reranking (the
default) the stream starts once the replies are chosen, since the choice needs every complete candidate
(:func:`stream_chunks`), so every error, the 504 of the time limit and the 500 of no reply included, is the
same JSON error as without streaming. With reranking off the tokens stream as they are decoded
(:func:`token_events`, model.pipeline's token streaming): the response starts with the first words of a
choice, every error before then is the JSON error, and one after it (the time limit) is an ``error`` event
that ends the stream. A client that disconnects cancels its request (:func:`unless_disconnected`, and the
stream's end): the engine stops its rows at the next decode step.
"""
# No `from __future__ import annotations`: FastAPI must see the per-app Body class itself, not its name.
import asyncio
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from typing import Any, TypeVar, cast

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import Response, StreamingResponse

from ..engine import Engine, GenerationRequest, InputError, Result, TextDelta
from ..errors import OpenAIError, openai_error
from ..openai_schemas import (AssistantMessage, ChatCompletion, ChatCompletionChunk, ChatMessageBase, ChatRequestBase,
                              Choice, Decoding, ErrorBody, ModelCard, ModelList, Usage, inline_schema)
from ..runtime import Runtime, RuntimeDep
from .respond import require_api_key

FINISH = {"eos": "stop", "length": "length"}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "invalid input, or a parameter this model does not support"},
    401: {"model": ErrorBody, "description": "missing or wrong API key (when one is set)"},
    404: {"model": ErrorBody, "description": "unknown model"},
    413: {"model": ErrorBody, "description": "request body too large"},
    415: {"model": ErrorBody, "description": "the body is not declared as JSON"},
    429: {"model": ErrorBody, "description": "too many requests in progress; see Retry-After"},
    500: {"model": ErrorBody, "description": "code no_reply: every candidate came out empty, so there is no choice "
                                             "to give (retry with another seed); else an internal error"},
    503: {"model": ErrorBody, "description": "not ready (loading, warming up or draining)"},
    504: {"model": ErrorBody, "description": "the request exceeded its time limit"},
}
STREAMED: dict[int | str, dict[str, Any]] = {200: {
    "description": "a chat.completion; with stream: true, an event stream of chat.completion.chunk objects (one "
                   "``data: {chunk}`` line and a blank line each), then ``data: [DONE]``",
    "content": {"text/event-stream": {"schema": inline_schema(ChatCompletionChunk)}}}}
CLIENT_GONE = 499  # the status logged and counted for a request whose client disconnected first (nginx's)
T = TypeVar("T")
log = logging.getLogger(__name__)


def decoding_of(temperature: float | None, top_p: float | None) -> tuple[str, float | None, float | None]:
    """The engine's (strategy, temperature, top_p) for OpenAI's ``temperature`` and ``top_p`` (module docstring);
    greedy decoding takes neither (None)."""
    if temperature == 0 or top_p == 0:
        return "greedy", None, None
    if temperature is None and top_p in (None, 1):
        return "greedy", None, None
    return "sample", 1.0 if temperature is None else float(temperature), 1.0 if top_p is None else float(top_p)


def dialog_turns(messages: Sequence[ChatMessageBase]) -> tuple[list[str], list[int], list[int]]:
    """(turns, index of each turn's first message, indices of the ignored system/developer messages)."""
    turns: list[str] = []
    first: list[int] = []
    roles: list[str] = []
    ignored: list[int] = []
    for i, m in enumerate(messages):
        if m.role not in ("user", "assistant"):
            ignored.append(i)
        elif roles and roles[-1] == m.role:
            turns[-1] = f"{turns[-1]} {m.content}"
        else:
            turns.append(m.content)
            first.append(i)
            roles.append(m.role)
    if not turns:
        raise OpenAIError(400, "messages: no user message: give the dialog so far, the last message the user's",
                          param="messages", code="invalid_value")
    if roles[-1] != "user":
        last = max(i for i, m in enumerate(messages) if m.role in ("user", "assistant"))
        raise OpenAIError(400, f"messages.{last}.role: the last dialog message must be the user's (the model "
                               "replies to the other party)", param=f"messages.{last}.role", code="invalid_value")
    return turns, first, ignored


def max_tokens_of(max_tokens: int | None, max_completion_tokens: int | None) -> int | None:
    if max_tokens is not None and max_completion_tokens is not None and max_tokens != max_completion_tokens:
        raise OpenAIError(400, "max_tokens and max_completion_tokens disagree: give one of them",
                          param="max_tokens", code="invalid_value")
    return max_completion_tokens if max_completion_tokens is not None else max_tokens


def model_card(engine: Engine) -> ModelCard:
    try:
        created = int((engine.bundle.path / "manifest.json").stat().st_mtime)
    except OSError:
        created = 0
    return ModelCard(id=engine.bundle.name, created=created)


def completion(result: Result, engine: Engine, rid: str, created: int, decoding: Decoding,
               ignored: list[int]) -> ChatCompletion:
    """The response; ``usage.prompt_tokens`` are the context pieces the model read (Result.prompt_tokens)."""
    usage_prompt = result.prompt_tokens
    choices = [Choice(index=i, message=AssistantMessage(content=r.text), finish_reason=FINISH[r.finish_reason],
                      seed=r.seed, score=r.score, ranking=r.ranking) for i, r in enumerate(result.replies)]
    completion_tokens = sum(r.tokens for r in result.replies)
    return ChatCompletion(
        id=f"chatcmpl-{rid}", created=created, model=engine.bundle.name, choices=choices,
        usage=Usage(prompt_tokens=usage_prompt, completion_tokens=completion_tokens,
                    total_tokens=usage_prompt + completion_tokens),
        system_fingerprint=f"fp_{engine.bundle.sha256[:12]}", seed=result.seed, candidates=result.candidates,
        decoding=decoding, ignored_messages=ignored)


def stream_chunks(out: ChatCompletion, include_usage: bool) -> list[dict[str, Any]]:
    """``out`` as chat.completion.chunk objects (app.openai_schemas.ChatCompletionChunk), in order: per choice
    its role (with content ''), its text, its finish_reason (with the extensions seed, score and ranking); the
    request's extensions in the first chunk; with ``include_usage`` a last chunk of usage and no choices, and
    ``usage: null`` in every other chunk (OpenAI's rule)."""
    head: dict[str, Any] = {"id": out.id, "object": "chat.completion.chunk", "created": out.created,
                            "model": out.model, "system_fingerprint": out.system_fingerprint}
    if include_usage:
        head["usage"] = None
    chunks: list[dict[str, Any]] = []
    for c in out.choices:
        last = {"seed": c.seed, "score": c.score, **({"ranking": c.ranking} if c.ranking is not None else {})}
        for delta, finish, extra in (({"role": "assistant", "content": ""}, None, {}),
                                     ({"content": c.message.content}, None, {}), ({}, c.finish_reason, last)):
            chunks.append({**head, "choices": [{"index": c.index, "delta": delta, "logprobs": None,
                                                "finish_reason": finish, **extra}]})
    chunks[0].update(seed=out.seed, candidates=out.candidates, decoding=out.decoding.model_dump(),
                     ignored_messages=out.ignored_messages)
    if include_usage:
        chunks.append({**head, "choices": [], "usage": out.usage.model_dump()})
    return chunks


def event(chunk: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line (JSON escapes every newline: one line)."""
    return b"data: " + json.dumps(chunk, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


DONE = b"data: [DONE]\n\n"


async def sse(chunks: list[dict[str, Any]]) -> AsyncIterator[bytes]:
    """The chunks as server-sent events, then ``data: [DONE]``."""
    for chunk in chunks:
        yield event(chunk)
    yield DONE


async def next_piece(task: "asyncio.Future[Result]", pieces: "asyncio.Queue[TextDelta]") -> TextDelta | None:
    """The next streamed piece, or None once the generation ended and every piece of it was read (its result,
    or its error, is then ``task``'s). Pieces are queued before the job's result is set, on the same loop, so
    none is left behind."""
    if not pieces.empty():
        return pieces.get_nowait()
    if task.done():
        return None
    getter: asyncio.Future[Any] = asyncio.ensure_future(pieces.get())
    try:
        await asyncio.wait({cast("asyncio.Future[Any]", task), getter}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return pieces.get_nowait() if not pieces.empty() else None


async def token_events(first: TextDelta, task: "asyncio.Future[Result]", pieces: "asyncio.Queue[TextDelta]",
                       head: dict[str, Any], tail: Any, include_usage: bool) -> AsyncIterator[bytes]:
    """Token streaming (reranking off): per choice its role, its text as it settles, its finish_reason (with
    seed and score); the request's extensions (``tail(result)``) in the chunk of the last finish_reason, then
    the usage chunk when asked. An error after the stream started is an ``error`` event, and the stream ends.
    Leaving early (the client disconnected) cancels the request."""
    started: set[int] = set()
    piece: TextDelta | None = first
    finishes: list[dict[str, Any]] = []
    try:
        while piece is not None:
            choice: dict[str, Any] = {"index": piece.choice, "logprobs": None, "finish_reason": None}
            if piece.choice not in started:
                started.add(piece.choice)
                yield event({**head, "choices": [{**choice, "delta": {"role": "assistant", "content": ""}}]})
            if piece.text:
                yield event({**head, "choices": [{**choice, "delta": {"content": piece.text}}]})
            if piece.reply is not None:
                r = piece.reply
                finishes.append({**head, "choices": [{**choice, "delta": {}, "finish_reason": FINISH[r.finish_reason],
                                                      "seed": r.seed, "score": r.score}]})
                if len(finishes) > 1:  # the last one waits for the request's extensions
                    yield event(finishes[-2])
            piece = await next_piece(task, pieces)
        try:
            result = task.result()
        except (HTTPException, OpenAIError, Exception) as e:
            for f in finishes[-1:]:
                yield event(f)
            if isinstance(e, HTTPException):
                yield event(openai_error(e.status_code, str(e.detail)))
            elif isinstance(e, OpenAIError):
                yield event(openai_error(e.status, e.message, e.param, e.code))
            else:
                log.exception("a streamed request failed")
                yield event(openai_error(500, "internal error"))
            return
        out = tail(result)
        if finishes:
            yield event({**finishes[-1], **out["extensions"]})
        if include_usage:
            yield event({**head, "choices": [], "usage": out["usage"]})
        yield DONE
    finally:
        if not task.done():
            task.cancel()  # Runtime.generate cancels the request's future: its rows stop at the next step


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """``work``'s result, or None when the client disconnects first; ``work`` is then cancelled, and
    Runtime.generate cancels the request's future, so the batcher decodes no more of its rows."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_disconnect(request))
    try:
        await asyncio.wait({task, gone}, return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:  # this request was cancelled (the drain timeout): Runtime.generate answers
        task.cancel()
        return await task
    finally:
        gone.cancel()
    if task.done():
        return task.result()
    task.cancel()
    try:
        await task
    except (asyncio.CancelledError, Exception):  # cancelled, or failed meanwhile: nobody is there to tell
        pass
    return None


async def _disconnect(request: Request) -> None:
    """Returns when the client disconnects (the body was read before: what comes next is the disconnect)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


async def _generate(rt: Runtime, engine: Engine, req: GenerationRequest, rid: str, first: list[int],
                    client: str = "") -> Result:
    """Runtime.generate, the engine's InputError named in this API's terms (``messages.i.content``)."""
    try:
        return await rt.generate(engine, req, rid, client)
    except InputError as e:
        loc: list[Any] = list(e.loc)
        if loc[:1] == ["context"]:
            loc = ["messages", first[loc[1]], "content"] if len(loc) > 1 else ["messages"]
        param = ".".join(str(x) for x in loc)
        raise OpenAIError(400, f"{param}: {e.msg}", param=param, code="invalid_value") from None


async def _first_or_result(task: "asyncio.Future[Result]", pieces: "asyncio.Queue[TextDelta]") -> TextDelta | Result:
    """The first streamed piece, or, when the generation ends without one (reranked, or an error first), its
    result (or its error, raised: the JSON error of an unstreamed request)."""
    try:
        piece = await next_piece(task, pieces)
    except asyncio.CancelledError:
        task.cancel()
        raise
    return piece if piece is not None else task.result()


def _chunk_head(rid: str, created: int, engine: Engine, include_usage: bool) -> dict[str, Any]:
    head: dict[str, Any] = {"id": f"chatcmpl-{rid}", "object": "chat.completion.chunk", "created": created,
                            "model": engine.bundle.name, "system_fingerprint": f"fp_{engine.bundle.sha256[:12]}"}
    if include_usage:
        head["usage"] = None
    return head


def _unknown_model(name: str, engine: Engine) -> OpenAIError:
    return OpenAIError(404, f"the model '{name[:80]}' does not exist: this server serves '{engine.bundle.name}' "
                            "(GET /v1/models)", param="model", code="model_not_found")


def router(Body: type[ChatRequestBase]) -> APIRouter:
    """The /v1 routes on their request body (app.openai_schemas.chat_request_model: this deployment's limits)."""
    r = APIRouter(prefix="/v1", tags=["openai"], dependencies=[Depends(require_api_key)])

    @r.post("/chat/completions", response_model=ChatCompletion, responses={**ERRORS, **STREAMED})
    async def chat_completions(body: Body,  # type: ignore[valid-type]
                               request: Request, rt: RuntimeDep) -> ChatCompletion | Response:
        """OpenAI's chat completion: n choices replying to the last (user) message of ``messages``, best first.

        With ``stream: true`` the same choices come as an event stream of chat.completion.chunk objects: per
        choice (its ``index`` in each chunk) its role, its text and its finish_reason, then a usage chunk when
        ``stream_options.include_usage``, then ``data: [DONE]``. With reranking (the default) the stream starts
        once the replies are chosen among the complete candidates, each text in one content delta, and every
        error is the same JSON error, with the same status, as without streaming. With ``rerank: false`` the
        tokens stream as they are decoded: a choice starts with its first words (choices numbered in the order
        they start; repeated replies are kept, not replaced), its text comes in several content deltas, the
        request's extensions come in the last finish_reason chunk; an error before the first words is the JSON
        error, one after them (the time limit) an ``error`` event that ends the stream. A client that
        disconnects cancels its request: its rows stop at the next decode step."""
        body = cast(ChatRequestBase, body)  # for the type checker: Body is built at run time from this base
        engine = rt.require_engine()

        def _decoding(result: Result) -> Decoding:
            sampled = strategy == "sample"
            return Decoding(strategy=strategy, temperature=temperature if sampled else None,  # type: ignore[arg-type]
                            top_p=top_p if sampled else None, rerank=result.reranked,
                            latent_temperature=(engine.latent_temperature if body.latent_temperature is None
                                                else body.latent_temperature))

        if body.model != engine.bundle.name:
            raise _unknown_model(body.model, engine)
        rid = request.state.request_id
        created = int(time.time())
        turns, first, ignored = dialog_turns(body.messages)
        strategy, temperature, top_p = decoding_of(body.temperature, body.top_p)
        req = GenerationRequest(context=turns, n=body.n, seed=body.seed, latent_temperature=body.latent_temperature,
                                strategy=strategy, temperature=temperature, top_p=top_p,  # type: ignore[arg-type]
                                max_tokens=max_tokens_of(body.max_tokens, body.max_completion_tokens),
                                rerank=body.rerank)
        usage = body.stream_options is not None and bool(body.stream_options.include_usage)
        if body.stream:
            loop, pieces = asyncio.get_running_loop(), asyncio.Queue[TextDelta]()

            def on_text(piece: TextDelta) -> None:  # on the engine's thread
                try:
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                except RuntimeError:  # the loop has closed: nobody is there to read it
                    pass

            req = dataclasses.replace(req, on_text=on_text)
            task = asyncio.ensure_future(_generate(rt, engine, req, rid, first, rt.client_of(request)))
            got = await unless_disconnected(request, _first_or_result(task, pieces))
            if got is None:
                return Response(status_code=CLIENT_GONE)
            if isinstance(got, TextDelta):  # reranking off: the tokens stream as they are decoded
                head = _chunk_head(rid, created, engine, usage)

                def tail(result: Result) -> dict[str, Any]:
                    out = completion(result, engine, rid, created, _decoding(result), ignored)
                    return {"usage": out.usage.model_dump(),
                            "extensions": {"seed": out.seed, "candidates": out.candidates,
                                           "decoding": out.decoding.model_dump(),
                                           "ignored_messages": out.ignored_messages}}

                return StreamingResponse(token_events(got, task, pieces, head, tail, usage),
                                         media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            result = got
        else:
            result = await _generate(rt, engine, req, rid, first, rt.client_of(request))
        if not result.replies:  # every candidate came out empty: no choice to give, and choices[0] must exist
            raise OpenAIError(500, f"the model wrote no reply to this dialog: all {result.candidates} candidates "
                                   "were empty; retry with another seed", code="no_reply")
        out = completion(result, engine, rid, created, _decoding(result), ignored)
        if not body.stream:
            return out
        return StreamingResponse(sse(stream_chunks(out, usage)), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @r.get("/models", response_model=ModelList, responses={401: ERRORS[401], 503: ERRORS[503]})
    def models(rt: RuntimeDep) -> ModelList:
        """The served model (one per server)."""
        return ModelList(data=[model_card(_loaded(rt))])

    @r.get("/models/{model_id}", response_model=ModelCard, responses={k: ERRORS[k] for k in (401, 404, 503)})
    def model_info(model_id: str, rt: RuntimeDep) -> ModelCard:
        """One model: the served one, else 404."""
        engine = _loaded(rt)
        if model_id != engine.bundle.name:
            raise _unknown_model(model_id, engine)
        return model_card(engine)

    return r


def _loaded(rt: Runtime) -> Engine:
    """The engine once the model is loaded (warming up is fine for listing it), else 503."""
    if rt.engine is None:
        raise OpenAIError(503, "not ready: loading the model", headers={"Retry-After": "1"})
    return rt.engine
