"""POST /respond: several diverse replies to a dialog context."""

import hmac
import logging
from typing import Annotated, Any, cast

from fastapi import APIRouter, Depends, HTTPException, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from ..engine import GenerationRequest, InputError
from ..runtime import RuntimeDep
from ..schemas import ModelRef, PriorOut, ReplyOut, RespondRequestBase, RespondResponse

log = logging.getLogger(__name__)
_bearer = HTTPBearer(auto_error=False, description="only when the server has an API key (DIALOG_API_KEY)")


def require_api_key(rt: RuntimeDep,
                    creds: Annotated[HTTPAuthorizationCredentials | None, Security(_bearer)]) -> None:
    key = rt.settings.api_key
    if key is None:
        return
    given = creds.credentials.encode() if creds is not None else b""
    if not hmac.compare_digest(given, key.get_secret_value().encode()):
        raise HTTPException(401, "missing or invalid API key", headers={"WWW-Authenticate": "Bearer"})


ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"description": "a bad Content-Length"},
    401: {"description": "missing or wrong API key (when one is set)"},
    413: {"description": "request body too large"},
    415: {"description": "the body is not declared as JSON (Content-Type: application/json)"},
    429: {"description": "too many requests in progress; see Retry-After"},
    503: {"description": "not ready (loading, warming up or draining)"},
    504: {"description": "the request exceeded its time limit"},
}


def router(Body: type[RespondRequestBase]) -> APIRouter:
    """The /respond route on its request body (app.schemas.request_model: this deployment's limits)."""
    r = APIRouter(tags=["dialog"])

    @r.post("/respond", response_model=RespondResponse, responses=ERRORS,
            dependencies=[Depends(require_api_key)])
    async def respond(body: Body, request: Request, rt: RuntimeDep) -> RespondResponse:  # type: ignore[valid-type]
        """Reply to the last turn of ``context`` with up to ``n`` diverse replies, best first."""
        body = cast(RespondRequestBase, body)  # for the type checker: Body is built at run time from this base
        engine = rt.require_engine()
        rid = request.state.request_id
        try:
            result = await rt.generate(engine, GenerationRequest(**body.model_dump()), rid, rt.client_of(request))
        except InputError as e:
            raise RequestValidationError([{"type": "value_error", "loc": ("body", *e.loc), "msg": e.msg,
                                           "input": e.value}]) from None
        return RespondResponse(
            replies=[ReplyOut(**{k: getattr(r, k) for k in ReplyOut.model_fields}) for r in result.replies],
            n_requested=result.n_requested, n_returned=result.n_returned,
            duplicates_dropped=result.duplicates_dropped, empty_dropped=result.empty_dropped, seed=result.seed, candidates=result.candidates,
            reranked=result.reranked,
            model=ModelRef(name=engine.bundle.name, sha256=engine.bundle.sha256),
            timing_ms=result.timing_ms, request_id=rid,
            prior=PriorOut(**result.prior) if result.prior is not None else None)

    return r

