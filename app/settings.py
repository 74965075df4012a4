"""Service settings: environment variables prefixed ``DIALOG_`` (and the same as flags of ``python -m app``)."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from model import rerank as rr
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DIALOG_", extra="ignore")

    # The served model. None serves model.bundle.DEFAULT_BUNDLE.
    bundle: Path | None = None
    device: str = Field("auto", description="'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ...")
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    # Request limits.
    max_turns: int = Field(20, ge=1, description="most context turns a request may send")
    max_turn_chars: int = Field(1000, ge=1, description="most characters in one turn")
    max_n: int = Field(16, ge=1, description="most replies a request may ask for")
    max_tokens: int = Field(64, ge=1, description="most tokens per reply (also capped by the model's max_decode_len)")
    max_body_bytes: int = Field(256 * 1024, ge=1024, description="largest request body, in bytes")
    dedupe_rounds: int = Field(3, ge=0, description="extra rounds of latent samples drawn when empty and (with "
                               "dedupe) duplicate replies leave fewer than n usable ones")

    # Micro-batching and back-pressure.
    max_batch_rows: int = Field(64, ge=1, description="most (context, latent) rows in one decode call")
    max_wait_ms: float = Field(5.0, ge=0, description="longest a batch waits for more rows, in milliseconds")
    max_per_client: int = Field(0, ge=0, description="most requests one client may have in progress (429 past "
                                "it); 0: no cap. A client is the peer address, or client_header's value")
    client_header: str | None = Field(None, description="a request header naming the client (set by a trusted "
                                      "proxy, e.g. X-Forwarded-For: its first address); unset: the peer address")
    queue_size: int = Field(64, ge=1, description="most requests admitted at once (queued or running); more get 429")
    request_timeout_s: float = Field(30.0, gt=0, description="per-request time limit, in seconds (then 504)")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads; 0 picks min(4, CPU cores - 1), at least 1")
    quantize: Literal["none", "int8", "bf16"] = Field(
        "none", description="'int8': decoder weights in int8 (CPU only); 'bf16': the vocabulary projection in bf16 "
                            "(a CPU with AVX512-BF16 or AMX, or a GPU): faster, slightly different replies")
    warmup: bool = True

    # What the replies are made of (model.lexicon, model.rerank).
    lexicon: bool = Field(True, description="decode only words of the bundle's decoding lexicon (when it has one)")
    rerank: bool = Field(True, description="over-generate candidates and choose n by relevance and diversity; "
                                           "a request's 'rerank' overrides it")
    candidates_per_reply: int = Field(rr.DEFAULT_CANDIDATES_PER_REPLY, ge=1, le=16, description="candidates decoded per requested reply "
                                                                  "when reranking")
    latent_temperature: float = Field(rr.DEFAULT_LATENT_TEMPERATURE, ge=0, le=10, description="default scale of the prior's standard "
                                                                   "deviation when sampling latent codes")
    max_candidates: int = Field(64, ge=1, le=256, description="most candidates one request may decode (at least "
                                "max_n, so that any n a request may ask for has its n candidates)")
    mmi_weight: float = Field(rr.DEFAULT_MMI_WEIGHT, ge=0, le=2, description="weight of the anti-language-model term against "
                                                           "generic replies (0: likelihood only)")
    diversity: float = Field(rr.DEFAULT_DIVERSITY, ge=0, le=10, description="weight of the similarity penalty of the "
                                                           "maximal-marginal-relevance choice")
    coherence_weight: float = Field(0.0, ge=0, le=10, description="weight of the response-selection head's "
                                    "coherence term in the reranking (needs a bundle whose model has the head)")
    anti_lm: Literal["probes", "reply_lm"] = Field(
        "probes", description="how the anti-language-model term estimates log p(reply): the decoder over probe "
                              "contexts (probes), or the bundle's bigram model of training replies (reply_lm: "
                              "much cheaper, rated less sensible; see docs/quality.md)")

    def engine_options(self) -> dict[str, object]:
        """Keyword arguments of app.engine.Engine from these settings (one place for the server and the CLI)."""
        return dict(max_turns=self.max_turns, max_turn_chars=self.max_turn_chars,
                    max_n=self.max_n, max_tokens=self.max_tokens, max_batch_rows=self.max_batch_rows,
                    max_wait_ms=self.max_wait_ms, queue_size=self.queue_size, dedupe_rounds=self.dedupe_rounds,
                    quantize=self.quantize, lexicon=self.lexicon, rerank=self.rerank,
                    candidates_per_reply=self.candidates_per_reply, max_candidates=self.max_candidates,
                    latent_temperature=self.latent_temperature,
                    mmi_weight=self.mmi_weight, diversity=self.diversity, anti_lm=self.anti_lm,
                    coherence_weight=self.coherence_weight, max_per_client=self.max_per_client)

    # Access.
    api_key: SecretStr | None = Field(None, description="when set, /respond and /v1/... need "
                                                        "'Authorization: Bearer <key>'")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="allowed CORS origins (comma-separated in the environment); empty: CORS off")
    drain_timeout_s: float = Field(10.0, ge=0, description="how long in-flight requests may finish after SIGTERM")
    drain_grace_s: float = Field(1.0, ge=0, le=60, description="after SIGTERM, how long the server keeps "
                                 "listening and answers 503 (so clients and load balancers see it draining) "
                                 "before it closes its socket; it also waits for in-flight requests, "
                                 "up to drain_timeout_s")

    @model_validator(mode="after")
    def _candidates_for_every_n(self) -> "Settings":
        # Below max_n, a request for more replies than max_candidates (the default n = 5 with max_candidates 4)
        # would get a 422 on candidates, a field it never sent: refuse the setting instead, once, at start-up.
        if self.max_candidates < self.max_n:
            error = PydanticCustomError(
                "value_error", "must be at least max_n ({max_n}; flag --max-n or DIALOG_MAX_N), so that any n a "
                "request may ask for has its n candidates", {"max_n": self.max_n})
            raise ValidationError.from_exception_data(type(self).__name__, [
                InitErrorDetails(type=error, loc=("max_candidates",), input=self.max_candidates)])
        return self

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("api_key", mode="before")
    @classmethod
    def _empty_key_is_none(cls, v: object) -> object:
        return None if v == "" else v
