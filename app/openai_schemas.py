"""Bodies of the OpenAI-compatible routes (/v1/chat/completions, /v1/models). Limits come from Settings, so the
request model is built per app, as for /respond (app.schemas.request_model).

Fields OpenAI defines keep OpenAI's names and ranges; this service's own are marked "extension". Parameters
this model cannot honour are refused with a 400 naming them, unless given at their neutral value (a penalty
of 0, logprobs false, no stop sequences), so clients that send the defaults explicitly still work.
"""
from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationInfo, create_model,
                      field_validator, model_validator)
from pydantic_core import PydanticCustomError

from model.decoding import SEED_MOD

from .schemas import RANKING, refuse_lone_surrogates
from .settings import Settings

DIALOG_ROLES = ("user", "assistant")  # the two parties; system and developer messages are not given to the model
MAX_TEMPERATURE = 2.0  # OpenAI's range of temperature is [0, 2]


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported_value", message)


class ChatMessageBase(BaseModel):
    """One message of the dialog so far. ``content`` is a string or a list of text parts (joined by spaces)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = Field(None, max_length=256, description="accepted and not used")

    @field_validator("content", mode="before")
    @classmethod
    def _text_parts(cls, v: Any) -> Any:
        if not isinstance(v, list):
            return v
        texts = []
        for part in v:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)
                    and set(part) <= {"type", "text"}):
                raise _unsupported("only text is supported: content is a string or a list of "
                                   "{\"type\": \"text\", \"text\": \"...\"} parts")
            texts.append(part["text"])
        return " ".join(texts)

    @field_validator("content")
    @classmethod
    def _dialog_text(cls, v: str, info: ValidationInfo) -> str:
        if info.data.get("role") in DIALOG_ROLES and not v.strip():
            raise ValueError("a user or assistant message must contain some text")
        return v


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    include_usage: bool | None = Field(None, description="true: one more chunk before data: [DONE] carries the "
                                                         "request's usage, with choices []; every other chunk then "
                                                         "has usage: null")
    include_obfuscation: bool | None = Field(None, description="only false: no chunk carries an obfuscation field")

    @field_validator("include_obfuscation")
    @classmethod
    def _no_obfuscation(cls, v: bool | None) -> bool | None:
        if v:
            raise _unsupported("include_obfuscation is not supported (only false): chunks carry no obfuscation "
                               "field")
        return v


class ChatRequestBase(BaseModel):
    """Fields and checks that do not depend on the configured limits (see :func:`chat_request_model`)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        refuse_lone_surrogates(cls.__name__, data)
        return data

    model: str = Field(min_length=1, max_length=256, description="the served model's id (GET /v1/models)")
    messages: list[ChatMessageBase]
    n: int = Field(1, ge=1, description="number of choices (distinct replies; fewer when the model cannot find "
                                        "that many different ones)")
    seed: int | None = Field(None, ge=0, le=SEED_MOD - 1, description="same request and seed, same choices; absent: "
                                                                  "a random one, returned as seed")
    temperature: float | None = Field(
        None, ge=0.0, le=MAX_TEMPERATURE, allow_inf_nan=False,
        description="absent: the service's decoding (greedy tokens, diversity from the latent codes); 0: greedy; "
                    "above 0: token sampling at this temperature (see the README's mapping)")
    top_p: float | None = Field(None, ge=0.0, le=1.0, allow_inf_nan=False,
                                description="nucleus of token sampling; below 1 without temperature: sampling "
                                            "at temperature 1; 0: greedy")
    max_tokens: int | None = Field(None, ge=1, description="tokens per choice; absent: the limit")
    max_completion_tokens: int | None = Field(None, ge=1, description="the same as max_tokens (OpenAI's newer "
                                                                      "name); give one, or both equal")
    user: str | None = Field(None, max_length=256, description="accepted and not used (not logged)")
    stream: bool | None = Field(
        False, description="true: the response is an event stream (text/event-stream) of chat.completion.chunk "
                           "objects ending in data: [DONE]. With reranking (the default) it starts once the "
                           "replies are chosen, since the choice needs every complete candidate: each choice "
                           "comes as its role, its whole text in one content delta and its finish_reason, and "
                           "every error is the same JSON error, with the same status, as without streaming. With "
                           "rerank false the tokens stream as they are decoded: a choice starts with its first "
                           "words (choices numbered in the order they start; repeated replies are not replaced), "
                           "its text comes in several content deltas, and the request's extensions come in the "
                           "last finish_reason chunk; an error before the first words is the JSON error, one "
                           "after it (the time limit) an error event that ends the stream")
    stream_options: StreamOptions | None = Field(None, description="only with stream: true")
    # OpenAI parameters accepted only at their neutral value
    frequency_penalty: float | None = Field(None, allow_inf_nan=False, description="only 0")
    presence_penalty: float | None = Field(None, allow_inf_nan=False, description="only 0")
    logprobs: bool | None = Field(None, description="only false")
    stop: str | list[str] | None = Field(None, description="only null or empty")
    # extensions
    latent_temperature: float | None = Field(
        None, ge=0.0, le=10.0, allow_inf_nan=False,
        description="extension: scales the prior's standard deviation when sampling latent codes; 0 gives the "
                    "prior mean; absent: the server's setting (0.7 by default)")
    rerank: bool | None = Field(None, description="extension: over-generate candidates and choose the n choices "
                                                  "by relevance and diversity; absent: the server's setting "
                                                  "(on by default); false with n=1 and a choice's seed replays it")

    @field_validator("stream_options")
    @classmethod
    def _only_streaming(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("stream_options is only allowed with stream: true")
        return v

    @field_validator("frequency_penalty", "presence_penalty")
    @classmethod
    def _no_penalty(cls, v: float | None, info: ValidationInfo) -> float | None:
        if v:
            raise _unsupported(f"{info.field_name} is not supported (only 0)")
        return v

    @field_validator("logprobs")
    @classmethod
    def _no_logprobs(cls, v: bool | None) -> bool | None:
        if v:
            raise _unsupported("logprobs is not supported (each choice's score, the mean log-probability per "
                               "token, is returned instead)")
        return v

    @field_validator("stop")
    @classmethod
    def _no_stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if v:
            raise _unsupported("stop sequences are not supported (a reply ends at the model's end token)")
        return v


def chat_request_model(settings: Settings, model_max_tokens: int | None = None) -> type[ChatRequestBase]:
    """ChatCompletionRequest with this deployment's limits (the same as /respond's), shown in the OpenAPI schema."""
    text = Annotated[str, StringConstraints(max_length=settings.max_turn_chars)]
    message = create_model("ChatMessage", __base__=ChatMessageBase,
                           content=(text, Field(description=f"at most {settings.max_turn_chars} characters")))
    max_tokens = min(settings.max_tokens, model_max_tokens or settings.max_tokens)
    tokens: Any = (int | None, Field(None, ge=1, le=max_tokens, description="tokens per choice; absent: the limit"))
    return create_model(
        "ChatCompletionRequest",
        __base__=ChatRequestBase,
        messages=(list[message], Field(min_length=1, max_length=settings.max_turns,  # type: ignore[valid-type]
                                       description="the dialog so far, oldest first, the last message the "
                                                   "user's; system and developer messages count but are not "
                                                   "given to the model")),
        n=(int, Field(1, ge=1, le=settings.max_n, description="number of choices")),
        max_tokens=tokens,
        max_completion_tokens=tokens,
    )


# ----- responses ----------------------------------------------------------------------------------------

class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int
    message: AssistantMessage
    finish_reason: Literal["stop", "length"] = Field(description="stop: the model ended the reply; length: cut "
                                                                 "at max_tokens")
    logprobs: None = None
    seed: int = Field(description="extension: this choice's own seed; the same request with this seed, n=1 and "
                                  "rerank=false replays the choice")
    score: float = Field(description="extension: mean log-probability per token, nats (higher is better)")
    ranking: dict[str, float] | None = Field(None, description="extension, " + RANKING)  # /respond's ReplyOut


class Usage(BaseModel):
    prompt_tokens: int = Field(description="pieces of the context the model reads (the last turns it keeps, with "
                                           "their start and end tokens and the dialog-start turn)")
    completion_tokens: int = Field(description="pieces of the returned replies, without end tokens")
    total_tokens: int


class Decoding(BaseModel):
    """Extension: how the request was decoded, after mapping temperature and top_p."""

    strategy: Literal["greedy", "sample"]
    temperature: float | None = Field(description="token temperature when sampling; null when greedy")
    top_p: float | None = Field(description="nucleus when sampling; null when greedy")
    latent_temperature: float
    rerank: bool


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(description="Unix time, seconds")
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str = Field(description="the served bundle (fp_ and its sha256's first 12 hex digits): "
                                                "same fingerprint, request and seed, same choices")
    seed: int = Field(description="extension: the request's seed (random when none was given)")
    candidates: int = Field(description="extension: candidate replies decoded for this request")
    decoding: Decoding
    ignored_messages: list[int] = Field(description="extension: indices of the system and developer messages, "
                                                    "which the model does not read")


class ChunkDelta(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["assistant"] | None = Field(None, description="in a choice's first chunk only")
    content: str | None = Field(None, description="'' in a choice's first chunk, then its whole text in one delta")


class ChunkChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")

    index: int = Field(description="the choice this chunk belongs to (0 to n - 1)")
    delta: ChunkDelta
    finish_reason: Literal["stop", "length"] | None = Field(description="null until the choice's last chunk")
    logprobs: None = None
    seed: int | None = Field(None, description="extension, in the choice's last chunk: as in the choice of a "
                                               "chat.completion")
    score: float | None = Field(None, description="extension, in the choice's last chunk")
    ranking: dict[str, float] | None = Field(None, description="extension, in the choice's last chunk when reranked")


class ChatCompletionChunk(BaseModel):
    """One event of a streamed chat completion (``stream: true``): ``data: {chunk}`` and a blank line; the
    stream ends with ``data: [DONE]``."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="the same in every chunk of a stream")
    object: Literal["chat.completion.chunk"]
    created: int = Field(description="Unix time, seconds")
    model: str
    system_fingerprint: str
    choices: list[ChunkChoice] = Field(description="one choice's role, content or finish_reason; [] in the usage "
                                                   "chunk")
    usage: Usage | None = Field(None, description="only with stream_options.include_usage: null in every chunk "
                                                  "but the last, which carries it with choices []")
    seed: int | None = Field(None, description="extension, in the first chunk (when tokens stream, rerank false: "
                                               "in the last finish_reason chunk): the request's seed")
    candidates: int | None = Field(None, description="extension, with seed")
    decoding: Decoding | None = Field(None, description="extension, with seed")
    ignored_messages: list[int] | None = Field(None, description="extension, with seed")


def inline_schema(model: type[BaseModel]) -> dict[str, Any]:
    """``model``'s JSON schema with its definitions written in place (for an OpenAPI media type, where a
    ``#/$defs/...`` reference would point at the document's root)."""
    schema = model.model_json_schema()
    defs = schema.pop("$defs", {})

    def resolve(node: Any) -> Any:
        if isinstance(node, dict):
            ref = node.get("$ref", "")
            if ref.startswith("#/$defs/"):
                return resolve(defs[ref.removeprefix("#/$defs/")])
            return {k: resolve(v) for k, v in node.items()}
        if isinstance(node, list):
            return [resolve(v) for v in node]
        return node

    return resolve(schema)


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(description="Unix time the bundle's manifest was written")
    owned_by: str = "cvae-dialog"


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str = Field(description="invalid_request_error, rate_limit_error or server_error")
    param: str | None = Field(description="the offending parameter, dotted (messages.2.content), when one is")
    code: str | None = Field(description="e.g. invalid_value, unknown_parameter, unsupported_value, "
                                         "model_not_found, invalid_api_key")


class ErrorBody(BaseModel):
    error: ErrorDetail
