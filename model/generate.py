"""Replies to many contexts, offline, as the service makes them: for the evaluation and the CLI.

A loop over model.pipeline: each context goes through ReplyPipeline.run as a request on its own, which is the
order of calls the service makes for a lone request, so the replies, seeds and finish reasons are the ones
``POST /respond`` returns for the same context, seed and settings (tests/app/test_parity.py). Contexts the
service would refuse (a turn over its length limit, say) come back as their InputError, to be skipped and
counted, not rated.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .bundle import Bundle
from .pipeline import GenerationRequest, InputError, Limits, ReplyPipeline, ReplySettings, Result


class Generator:
    def __init__(self, bundle: Bundle, settings: ReplySettings | None = None, limits: Limits | None = None,
                 max_rows: int = 64):
        """``max_rows``: most rows in one decode call, the service's DIALOG_MAX_BATCH_ROWS."""
        self.pipeline = ReplyPipeline(bundle, settings, limits)
        self.max_rows = max_rows

    @property
    def settings(self) -> ReplySettings:
        return self.pipeline.settings

    def respond(self, context: Sequence[str], n: int, seed: int, **options: Any) -> Result:
        """n replies to one context (turns, oldest first), best first; options as in GenerationRequest.
        Raises InputError for a request the service would refuse."""
        req = GenerationRequest(context=list(context), n=n, seed=seed, **options)
        return self.pipeline.run(self.pipeline.prepare(req), self.max_rows)

    def respond_all(self, contexts: Sequence[Sequence[str]], n: int, seeds: Sequence[int],
                    **options: Any) -> Iterator[Result | InputError]:
        """:meth:`respond` for each context with its seed, in order; a refused context yields its InputError."""
        for context, seed in zip(contexts, seeds, strict=True):
            try:
                yield self.respond(context, n, seed, **options)
            except InputError as e:
                yield e
