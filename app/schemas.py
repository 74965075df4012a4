"""Request and response bodies. Limits come from Settings, so the request model is built per app."""
from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (BaseModel, ConfigDict, Field, StringConstraints, ValidationError, create_model, field_validator,
                      model_validator)
from pydantic_core import InitErrorDetails, PydanticCustomError

from model.decoding import SEED_MOD

from .settings import Settings

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
_SURROGATE = re.compile("[\ud800-\udfff]")  # in a str from JSON, always a lone one: the decoder joins pairs
MAX_REPORTED = 10


def lone_surrogates(data: Any) -> list[tuple[tuple[str | int, ...], str, bool]]:
    """(location, string, whether it is a field name) of each string in a decoded JSON body that holds a lone
    surrogate (JSON's ``"\\ud800"``: half of a UTF-16 pair, not a character, and not encodable as UTF-8), in
    document order, the first MAX_REPORTED. A field name's location is that of its object. Iterative: a body
    nests as deep as the JSON decoder goes, deeper than a recursive walk could follow."""
    found: list[tuple[tuple[str | int, ...], str, bool]] = []
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), data)]
    while stack and len(found) < MAX_REPORTED:
        loc, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                found.append((loc, value, False))
        elif isinstance(value, dict):
            for k in value:
                if isinstance(k, str) and _SURROGATE.search(k):
                    found.append((loc, k, True))
            stack.extend(((*loc, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend(((*loc, i), v) for i, v in reversed(list(enumerate(value))))
    return found[:MAX_REPORTED]


def refuse_lone_surrogates(title: str, data: Any) -> None:
    """Raise one validation error per string holding a lone surrogate (see :func:`lone_surrogates`), at its
    location: every string of a request, whatever its field's own checks, and the field names, which reach no
    field check at all."""
    found = lone_surrogates(data)
    if not found:
        return
    errors = []
    for loc, text, is_name in found:
        first = _SURROGATE.search(text)
        escape = first.group().encode("unicode_escape").decode() if first else ""
        what = "a field name" if is_name else "the text"
        errors.append(InitErrorDetails(type=PydanticCustomError(
            "string_unicode", "{what} holds a lone surrogate ({escape}): half of a UTF-16 pair, not a character; "
            "send UTF-8 text, or a character beyond U+FFFF as both halves of its pair",
            {"what": what, "escape": escape}), loc=loc, input=text))
    raise ValidationError.from_exception_data(title, errors)


class RespondRequestBase(BaseModel):
    """Fields and checks that do not depend on the configured limits (see :func:`request_model`)."""

    # Strict types: "5" is not a number and true is not 1 (ints are accepted where a float is expected).
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _no_lone_surrogates(cls, data: Any) -> Any:
        refuse_lone_surrogates(cls.__name__, data)
        return data

    context: list[str]
    n: int = Field(5, ge=1, description="number of replies")
    seed: int | None = Field(None, ge=0, le=SEED_MOD - 1,
                             description="same request and seed, same replies; absent: a random one, returned")
    latent_temperature: float | None = Field(None, ge=0.0, le=10.0, allow_inf_nan=False,
                                             description="scales the prior's standard deviation; 0 gives the prior "
                                                         "mean; absent: the server's setting (0.7 by default)")
    latents: list[list[FiniteFloat]] | None = Field(
        None, description="latent codes to decode instead of sampling (each of the model's latent_dim values)")
    strategy: Literal["greedy", "sample"] = "greedy"
    temperature: float | None = Field(None, gt=0.0, le=10.0, allow_inf_nan=False,
                                      description="strategy 'sample' only (else 422); absent: 1")
    top_k: int | None = Field(None, ge=0, le=100_000,
                              description="strategy 'sample' only (else 422); 0 or absent keeps every token")
    top_p: float | None = Field(None, gt=0.0, le=1.0, allow_inf_nan=False,
                                description="strategy 'sample' only (else 422); 1 or absent keeps every token")
    max_tokens: int | None = Field(None, ge=1, description="tokens per reply; absent: the limit")
    dedupe: bool = Field(True, description="drop repeated replies (more samples are drawn when fewer than n "
                                           "usable replies remain)")
    return_latents: bool = Field(False, description="also return each reply's latent code (latent) and the prior "
                                 "they were drawn from (prior: mean, std, latent_temperature)")
    rerank: bool | None = Field(None, description="over-generate candidates and choose the n replies by "
                                "relevance (against generic answers) and diversity; absent: the server's "
                                "setting (on by default). Off: the n samples ranked by score")
    candidates: int | None = Field(None, ge=1, description="candidates to decode when reranking (at least n, at "
                                   "most the server's max_candidates; 422 when not reranking); absent: the "
                                   "server's candidates_per_reply x n")

    @field_validator("context")
    @classmethod
    def _turns_not_blank(cls, v: list[str]) -> list[str]:
        for t in v:
            if not t.strip():
                raise ValueError("every turn must contain some text")
        return v

    @model_validator(mode="after")
    def _n_matches_latents(self) -> "RespondRequestBase":
        if self.latents is not None and "n" in self.model_fields_set and self.n != len(self.latents):
            error = PydanticCustomError("value_error", "n is {n} but {k} latent codes were given (one reply each): "
                                        "leave n out or make them agree", {"n": self.n, "k": len(self.latents)})
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=error, loc=("n",), input=self.n)])
        return self


RANKING = ("when reranked: likelihood (mean log p(reply | context, z)), anti_lm (mean log p(reply), estimated over "
           "four probe contexts, or by the bundle's reply bigram model), rank = likelihood - mmi_weight * anti_lm "
           "(+ coherence_weight * coherence when the server sets a coherence weight: coherence, the log-probability "
           "the model's response-selection head gives the reply among the request's candidates), nats per token; "
           "mmr, the value the reply was picked with: rank - diversity * its largest similarity to a "
           "reply before it. Replies come in the order they were picked, so mmr (not rank) falls down the list, "
           "replies that were cut off or implausible last")
REDRAWN = ("; new samples are drawn only when fewer than n usable replies remain (with reranking, complete ones: "
           "dropped candidates are not replaced as long as n are left), in at most the server's dedupe_rounds rounds")

LATENT_LIMIT = 100.0  # |value| of a given latent code: far outside any prior (values are in standard deviations)


def request_model(settings: Settings, model_max_tokens: int | None = None) -> type[RespondRequestBase]:
    """RespondRequest with this deployment's limits, so they show in the OpenAPI schema too. ``max_tokens`` is
    bounded by the setting and by the served model's max_decode_len when known."""
    turn = Annotated[str, StringConstraints(min_length=1, max_length=settings.max_turn_chars)]
    value = Annotated[float, Field(ge=-LATENT_LIMIT, le=LATENT_LIMIT, allow_inf_nan=False)]
    code = Annotated[list[value], Field(min_length=1, max_length=4096)]
    max_tokens = min(settings.max_tokens, model_max_tokens or settings.max_tokens)
    return create_model(
        "RespondRequest",
        __base__=RespondRequestBase,
        context=(list[turn], Field(min_length=1, max_length=settings.max_turns,
                                   description="the dialog so far, oldest turn first; the last turn is the "
                                               "other party's")),
        n=(int, Field(5, ge=1, le=settings.max_n, description="number of replies")),
        candidates=(int | None, Field(None, ge=1, le=settings.max_candidates,
                                      description=RespondRequestBase.model_fields["candidates"].description)),
        max_tokens=(int | None, Field(None, ge=1, le=max_tokens,
                                      description="tokens per reply; absent: the limit (the smaller of the "
                                                  "server's max_tokens and the model's max_decode_len)")),
        latents=(list[code] | None, Field(None, min_length=1, max_length=settings.max_n,
                                          description="latent codes to decode instead of sampling, values "
                                                      f"within +-{LATENT_LIMIT:g}; one reply each, so n, if "
                                                      "given, must equal their number; their replies carry "
                                                      "no seed")),
    )


class ReplyOut(BaseModel):
    text: str
    score: float = Field(description="mean log-probability per token, nats (higher is better)")
    tokens: int = Field(description="number of generated tokens, without the end token")
    finish_reason: Literal["eos", "length"]
    sample_index: int
    seed: int | None = Field(description="this reply's own seed: a request with it, n=1 and rerank=false "
                                         "replays the reply (null for a reply decoded from a given latent code)")
    latent: list[float] | None = None
    ranking: dict[str, float] | None = Field(None, description=RANKING)


class ModelRef(BaseModel):
    name: str
    sha256: str


class PriorOut(BaseModel):
    mean: list[float] = Field(description="the prior network's mean mu(context), one value per latent dimension")
    std: list[float] = Field(description="its standard deviation sigma(context) per dimension (the prior is a "
                                         "diagonal Gaussian)")
    latent_temperature: float | None = Field(description="the sampled codes are mean + latent_temperature * std * "
                                                         "eps with eps ~ N(0, I); null when the request gave its "
                                                         "latents")


class RespondResponse(BaseModel):
    replies: list[ReplyOut]
    n_requested: int
    n_returned: int
    duplicates_dropped: int = Field(description="repeated replies dropped (with dedupe)" + REDRAWN)
    empty_dropped: int = Field(description="empty replies dropped (never returned)" + REDRAWN)
    seed: int
    candidates: int = Field(description="candidate replies decoded for this request")
    reranked: bool
    model: ModelRef
    timing_ms: dict[str, float]
    request_id: str
    prior: PriorOut | None = Field(None, description="with return_latents: the prior p(z | context) the latent "
                                                     "codes were drawn from; null otherwise")


class Limits(BaseModel):
    max_turns: int
    max_turn_chars: int
    max_n: int
    max_tokens: int
    max_body_bytes: int
    request_timeout_s: float


class InfoResponse(BaseModel):
    version: str
    model: ModelRef
    text_style: str
    config: dict[str, Any]
    vocab_size: int
    device: str
    torch_threads: int
    limits: Limits
    batching: dict[str, Any]


class Status(BaseModel):
    status: str
    detail: str | None = None
