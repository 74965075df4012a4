"""Command line: ``python -m app [serve] [--bundle DIR] [--port 8000] ...`` runs the server;
``python -m app respond --bundle DIR "hi there" -n 5`` prints replies without one.

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
from collections.abc import Iterator
from typing import Any

from .settings import Settings

def _seed(text: str) -> int:
    from model.decoding import SEED_MOD

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if not 0 <= value < SEED_MOD:
        raise argparse.ArgumentTypeError(f"a seed is between 0 and {SEED_MOD - 1}, got {value}")
    return value


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
    ("dedupe_rounds", int, "extra sampling rounds to replace duplicates"),
    ("max_batch_rows", int, "most rows per decode call (1 turns batching off)"),
    ("max_wait_ms", float, "longest a batch waits for more rows"),
    ("queue_size", int, "most requests in progress; more get 429"),
    ("request_timeout_s", float, "per-request time limit (504 after it)"),
    ("torch_threads", int, "torch threads (0: min(4, cores - 1), at least 1)"),
    ("quantize", str, "decoder weights: none or int8 (CPU; faster, slightly different replies)"),
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
]


def _add_flags(p: argparse.ArgumentParser, names: set[str] | None = None) -> None:
    for name, typ, help_ in SERVE_FLAGS:
        if names is None or name in names:
            env = f"DIALOG_{name.upper()}"
            p.add_argument("--" + name.replace("_", "-"), dest=name, type=typ, default=None,
                           help=f"{help_} [env {env}]")


class UsageError(Exception):
    """A setting the program cannot run with: printed as one line, exit status 2."""


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from pydantic import ValidationError

    from model.files import DeviceError, pick_device

    given = {k: v for k, v in vars(args).items() if k in {f[0] for f in SERVE_FLAGS} and v is not None}
    try:
        settings = Settings(**given, **extra)  # init arguments take precedence over the environment
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])} (flag --{str(err['loc'][0]).replace('_', '-')} "
                             f"or DIALOG_{str(err['loc'][0]).upper()}): {err['msg']}, got {err.get('input')!r}"
                             for err in e.errors())
        raise UsageError(f"invalid setting: {problems}") from None
    try:
        pick_device(settings.device)
    except DeviceError as e:
        raise UsageError(str(e)) from None
    return settings


def serve_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m app",
        description="Run the dialog response server (the default command). Other command: "
                    "'python -m app respond --bundle DIR \"hi there\" -n 5' prints replies without a server "
                    "(see 'python -m app respond --help').",
        epilog="Every flag mirrors an environment variable DIALOG_<NAME>; flags win.")
    _add_flags(p)
    p.add_argument("--no-warmup", dest="warmup", action="store_false", default=None,
                   help="skip the warm-up request (ready at once)")
    return p


def respond_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m app respond",
                                description="Print replies to a dialog context, without a server.")
    p.add_argument("turns", nargs="+", help="the dialog so far, oldest turn first (one argument per turn)")
    p.add_argument("-n", type=int, default=5, help="number of replies (default 5)")
    p.add_argument("--seed", type=_seed, default=None, help="0 to 2^63 - 2, as the API takes")
    p.add_argument("--strategy", choices=("greedy", "sample"), default="greedy")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--max-tokens", type=int, default=None)
    p.add_argument("--no-dedupe", dest="dedupe", action="store_false")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    _add_flags(p, {"bundle", "device", "torch_threads", "max_n", "dedupe_rounds", "quantize", "lexicon", "rerank",
                   "candidates_per_reply", "max_candidates", "mmi_weight", "diversity", "latent_temperature",
                   "anti_lm"})
    return p


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

    from .engine import Engine, InputError

    args = respond_parser().parse_args(argv)
    try:
        s = _settings(args)
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
    except (BundleError, InputError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"seed": result.seed, "replies": [{k: v for k, v in r.__dict__.items() if k not in ("logprob_null", "n_scored")} for r in result.replies],
                          "duplicates_dropped": result.duplicates_dropped}, indent=2))
        return 0
    print(f"# seed {result.seed}; {result.n_returned} of {result.n_requested} replies, "
          f"{result.duplicates_dropped} duplicates dropped")
    for r in result.replies:
        print(f"{r.score:8.3f}  seed {r.seed!s:<20} {r.text}")
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
