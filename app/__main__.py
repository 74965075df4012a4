"""Command line: ``python -m app [serve] [--bundle DIR] [--port 8000] ...`` runs the server;
``python -m app respond --bundle DIR "hi there" -n 5`` prints replies without one. Installed, the same command
is ``cvae-dialog`` (pyproject.toml's console script).

Flags override the DIALOG_* environment variables they mirror."""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, cast

from .settings import Settings


def _request_value(name: str, number: type[int] | type[float]) -> tuple[Callable[[str], Any], str]:
    """The argparse type of ``respond``'s flag for the request field ``name``, and its range in words: a
    number within that field's bounds in app.schemas.RespondRequestBase (read from the schema, so the command
    refuses what the API refuses, with one line and exit status 2, before any model is loaded)."""
    import annotated_types as at
    from pydantic import TypeAdapter, ValidationError

    from .schemas import RespondRequestBase

    metadata = RespondRequestBase.model_fields[name].metadata
    adapter: TypeAdapter[Any] = TypeAdapter(cast(Any, Annotated)[(number, *metadata)])

    def parse(text: str) -> Any:
        try:
            value = number(text)
        except ValueError:
            kind = "a whole number" if number is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        try:
            adapter.validate_python(value)
        except ValidationError as e:
            raise argparse.ArgumentTypeError(f"{e.errors()[0]['msg'].removeprefix('Input ')}, got {text}") from None
        return value

    def show(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    words = {at.Gt: ("gt", "above"), at.Ge: ("ge", "at least"), at.Lt: ("lt", "below"), at.Le: ("le", "at most")}
    bounds = [f"{words[type(m)][1]} {show(getattr(m, words[type(m)][0]))}" for m in metadata if type(m) in words]
    return parse, ", ".join(bounds)


def _bool(text: str) -> bool:
    low = text.strip().lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


SERVE_FLAGS: list[tuple[str, Any, str]] = [
    ("bundle", str, "model bundle folder (default: model/pretrained/chat-cyclical)"),
    ("device", str, "auto, cpu, cuda, cuda:N"),
    ("host", str, "address to listen on"),
    ("port", int, "port to listen on"),
    ("log_level", str, "debug, info, warning or error"),
    ("max_turns", int, "most context turns per request"),
    ("max_turn_chars", int, "most characters per turn"),
    ("max_n", int, "most replies per request"),
    ("max_tokens", int, "most tokens per reply"),
    ("max_body_bytes", int, "largest request body in bytes"),
    ("dedupe_rounds", int, "extra sampling rounds making up for empty replies and duplicates when fewer than n "
                           "usable replies remain"),
    ("max_batch_rows", int, "most rows per decode call (1 turns batching off)"),
    ("max_wait_ms", float, "longest a batch waits for more rows"),
    ("queue_size", int, "most requests in progress; more get 429"),
    ("max_per_client", int, "most requests one client may have in progress (429 past it); 0: no cap"),
    ("client_header", str, "header naming the client, set by a trusted proxy (e.g. X-Forwarded-For)"),
    ("request_timeout_s", float, "per-request time limit (504 after it)"),
    ("torch_threads", int, "torch threads (0: min(4, cores - 1), at least 1)"),
    ("quantize", str, "decoder precision: none, int8 (CPU) or bf16 (bf16 CPU or GPU); faster, slightly different replies"),
    ("api_key", str, "require 'Authorization: Bearer KEY' on /respond and /v1/... (prefer DIALOG_API_KEY)"),
    ("cors_origins", str, "comma-separated allowed CORS origins"),
    ("drain_timeout_s", float, "how long in-flight requests may finish on SIGTERM"),
    ("drain_grace_s", float, "after SIGTERM, keep listening (answering 503) this long before closing"),
    ("lexicon", _bool, "true/false: decode only words of the bundle's decoding lexicon"),
    ("rerank", _bool, "true/false: over-generate and choose replies by relevance and diversity"),
    ("candidates_per_reply", int, "candidates decoded per requested reply when reranking"),
    ("latent_temperature", float, "default scale of the prior's standard deviation (0.7)"),
    ("max_candidates", int, "most candidates one request may decode"),
    ("mmi_weight", float, "weight of the term against generic replies (0: likelihood only)"),
    ("diversity", float, "weight of the similarity penalty between chosen replies"),
    ("anti_lm", str, "probes or reply_lm: how the term against generic replies estimates log p(reply)"),
    ("coherence_weight", float, "weight of the response-selection head's coherence term (bundles with the head)"),
]


def _add_flags(p: argparse.ArgumentParser, names: set[str] | None = None,
               types: dict[str, Callable[[str], Any]] | None = None) -> None:
    for name, typ, help_ in SERVE_FLAGS:
        if names is None or name in names:
            env = f"DIALOG_{name.upper()}"
            p.add_argument("--" + name.replace("_", "-"), dest=name, type=(types or {}).get(name, typ), default=None,
                           help=f"{help_} [env {env}]")


class UsageError(Exception):
    """A setting the program cannot run with: printed as one line, exit status 2."""


def _settings(args: argparse.Namespace, names: set[str] | None = None, **extra: Any) -> Settings:
    """Settings from the flags ``names`` (default: every setting's flag) over the environment."""
    from pydantic import ValidationError

    from model.files import DeviceError, pick_device

    names = {f[0] for f in SERVE_FLAGS} if names is None else names
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    try:
        settings = Settings(**given, **extra)  # init arguments take precedence over the environment
    except ValidationError as e:
        def where(name: str) -> str:  # the flag only where this command has it (respond takes a few)
            flag = f"flag --{name.replace('_', '-')} or " if name in names else ""
            return f"{flag}DIALOG_{name.upper()}"

        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])} ({where(str(err['loc'][0]))}): "
                             f"{err['msg']}, got {err.get('input')!r}" for err in e.errors())
        raise UsageError(f"invalid setting: {problems}") from None
    try:
        pick_device(settings.device)
    except DeviceError as e:
        raise UsageError(str(e)) from None
    return settings


def program() -> str:
    """The name this command was run by: ``python -m app``, or the installed ``cvae-dialog``'s."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("cvae-dialog") else "python -m app"


def serve_parser() -> argparse.ArgumentParser:
    prog = program()
    p = argparse.ArgumentParser(
        prog=prog,
        description=f"Run the dialog response server (the default command, also '{prog} serve'). Other command: "
                    f"'{prog} respond --bundle DIR \"hi there\" -n 5' prints replies without a server "
                    f"(see '{prog} respond --help').",
        epilog="Every flag mirrors an environment variable DIALOG_<NAME> (--no-warmup: DIALOG_WARMUP=false); "
               "flags win.")
    _add_flags(p)
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=None,
                   help="skip the warm-up request (ready at once) [env DIALOG_WARMUP=false]")
    return p


# The settings ``respond`` takes as flags. Not max_tokens: its --max-tokens is the request's (as on /respond),
# under the DIALOG_MAX_TOKENS limit.
RESPOND_SETTINGS = {"bundle", "device", "torch_threads", "max_n", "dedupe_rounds", "quantize", "lexicon", "rerank",
                    "candidates_per_reply", "max_candidates", "mmi_weight", "diversity", "latent_temperature",
                    "anti_lm", "coherence_weight"}


def respond_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{program()} respond",
                                description="Print replies to a dialog context, without a server.")
    # A flag that is a field of the request takes the values the API takes (app.schemas); the server's limits
    # (--max-n, DIALOG_MAX_TOKENS, the model's max_decode_len) are then checked as the server checks them.
    flags = {name: _request_value(name, number) for name, number in (
        ("n", int), ("seed", int), ("temperature", float), ("top_k", int), ("top_p", float), ("max_tokens", int),
        ("latent_temperature", float))}

    def request_flag(flag: str, name: str, default: Any, help_: str) -> None:
        check, bounds = flags[name]
        p.add_argument(flag, dest=name, type=check, default=default, help=f"{help_} ({bounds})")

    p.add_argument("turns", nargs="+", help="the dialog so far, oldest turn first (one argument per turn)")
    request_flag("-n", "n", 5, "number of replies, default 5")
    request_flag("--seed", "seed", None, "the same seed gives the same replies; default: a random one")
    p.add_argument("--strategy", choices=("greedy", "sample"), default="greedy")
    request_flag("--temperature", "temperature", None, "--strategy sample only: the token temperature, default 1")
    request_flag("--top-k", "top_k", None, "--strategy sample only: keep the k likeliest tokens, default 0 (all)")
    request_flag("--top-p", "top_p", None, "--strategy sample only: keep the likeliest tokens of this total "
                                           "probability, default 1 (all)")
    request_flag("--max-tokens", "max_tokens", None, "tokens per reply, default and most: the smaller of "
                                                     "DIALOG_MAX_TOKENS and the model's max_decode_len")
    p.add_argument("--no-dedupe", dest="dedupe", action="store_false")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_flags(p, RESPOND_SETTINGS, types={"latent_temperature": flags["latent_temperature"][0]})
    return p


def _no_bundle_traceback(record: logging.LogRecord) -> bool:
    """Drop the traceback uvicorn logs when the start-up fails on a BundleError (a bundle that cannot load, or
    settings it cannot serve): the lifespan has already said what is wrong in one line (app.main)."""
    msg = record.getMessage()
    return not (msg.startswith("Traceback") and "model.bundle.BundleError: " in msg)


def serve(argv: list[str]) -> int:
    import uvicorn

    from model.bundle import DEFAULT_BUNDLE

    from .main import create_app

    args = serve_parser().parse_args(argv)
    extra = {} if args.warmup is None else {"warmup": args.warmup}
    try:
        settings = _settings(args, **extra)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    bundle = settings.bundle or DEFAULT_BUNDLE
    if not bundle.is_dir():
        how = "" if settings.bundle else " (the default model is not installed; pass --bundle DIR or set DIALOG_BUNDLE)"
        print(f"error: BundleError: {bundle}: bundle folder not found{how}", file=sys.stderr)
        return 2
    app = create_app(settings)
    runtime = app.state.runtime
    logging.getLogger("uvicorn.error").addFilter(_no_bundle_traceback)

    class Server(uvicorn.Server):
        """On the first SIGTERM/SIGINT: readiness and /respond turn 503 at once, while the socket stays
        open for ``drain_grace_s`` and until in-flight requests finish (at most ``drain_timeout_s``);
        then uvicorn's own graceful shutdown runs. A second signal stops at once.

        A stop asked for by a signal is a normal end: once drained, the process exits with status 0.
        (uvicorn's own handling re-raises the signal after its shutdown, so the process would die of it:
        status 143, a KeyboardInterrupt traceback on Ctrl-C, and `make serve` ending in "*** Terminated".)"""

        draining_since: float | None = None

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield  # signal handlers can only be set from the main thread
                return
            original = {sig: signal.signal(sig, self.handle_exit) for sig in (signal.SIGINT, signal.SIGTERM)}
            try:
                yield
            finally:
                for sig, handler in original.items():
                    signal.signal(sig, handler)

        def handle_exit(self, sig: int, frame: Any) -> None:
            if self.draining_since is not None:
                super().handle_exit(sig, frame)
                return
            self.draining_since = time.monotonic()
            runtime.start_draining()
            threading.Thread(target=self._stop_when_drained, args=(sig, frame), daemon=True,
                             name="drain").start()

        def _stop_when_drained(self, sig: int, frame: Any) -> None:
            start = self.draining_since or time.monotonic()
            time.sleep(settings.drain_grace_s)
            while runtime.metrics.active > 0 and time.monotonic() - start < settings.drain_timeout_s:
                time.sleep(0.02)
            # What is left of the drain timeout bounds uvicorn's own wait for open requests.
            left = settings.drain_timeout_s - (time.monotonic() - start)
            self.config.timeout_graceful_shutdown = max(1, int(left + 0.999))
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, host=settings.host, port=settings.port, log_level=settings.log_level,
                            access_log=False, timeout_graceful_shutdown=max(1, int(settings.drain_timeout_s)),
                            log_config=None)
    server = Server(config)
    server.run()
    return 0 if server.started else 3


def respond(argv: list[str]) -> int:
    from model.bundle import BundleError
    from model.rerank import RerankError

    from .engine import Engine, InputError

    args = respond_parser().parse_args(argv)
    try:
        s = _settings(args, RESPOND_SETTINGS)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING)
    try:
        engine = Engine.from_bundle(s.bundle, device=s.device, torch_threads=s.torch_threads,
                                    **s.engine_options())
        result = engine.respond(args.turns, n=args.n, seed=args.seed, strategy=args.strategy,
                                temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                max_tokens=args.max_tokens,
                                dedupe=args.dedupe)
    except (BundleError, RerankError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        hidden = ("logprob_null", "n_scored")
        print(json.dumps({"seed": result.seed, "reranked": result.reranked, "candidates": result.candidates,
                          "replies": [{k: v for k, v in r.__dict__.items() if k not in hidden} for r in result.replies],
                          "duplicates_dropped": result.duplicates_dropped, "empty_dropped": result.empty_dropped},
                         indent=2))
        return 0
    order = ("in the order the reranker picked them (mmr: rank less the similarity to the replies above)"
             if result.reranked else "by score")
    print(f"# seed {result.seed}; {result.n_returned} of {result.n_requested} replies from {result.candidates} "
          f"candidates, {order}; {result.duplicates_dropped} duplicates and {result.empty_dropped} empty dropped")
    ranked_head = f"{'mmr':>6} {'rank':>7} " if result.reranked else ""
    print(f"{'#':<2} {ranked_head}{'score':>7}  {'seed':<20} reply")
    for i, r in enumerate(result.replies, 1):
        ranked = f"{r.ranking['mmr']:6.3f} {r.ranking['rank']:7.3f} " if r.ranking else ""
        print(f"{i:<2} {ranked}{r.score:7.3f}  {r.seed!s:<20} {r.text}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "respond":
        return respond(argv[1:])
    if argv and argv[0] == "serve":
        argv = argv[1:]
    return serve(argv)


if __name__ == "__main__":
    sys.exit(main())
