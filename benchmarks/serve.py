"""Serving throughput and latency: /respond with n=5 over HTTP, and the engine alone, batching on and off.

    python -m benchmarks.serve                       # HTTP and engine, fp32 and int8, batching on and off
    python -m benchmarks.serve --modes engine --quantize int8 --concurrency 1,16

For each setup (batching on: the server's defaults; batching off: ``max_batch_rows=1``, so each reply is
decoded alone) and each concurrency c, c clients send requests back to back, each the next context of a
fixed list with a fixed seed, until ``--requests`` have completed or ``--seconds`` have passed (after
``--warmup`` requests per client that are not counted). Latency is the request's wall time at the client;
replies/s counts the replies returned over the measured wall time.

HTTP: the server is ``python -m app`` started as a subprocess on a free loopback port (its settings passed as
DIALOG_* variables) and driven by an async httpx client. Engine: :class:`app.engine.Engine` in this process,
its batching thread running, driven by c client threads (no HTTP, no JSON).
"""
from __future__ import annotations

import argparse
import asyncio
import threading
import time
from pathlib import Path
from typing import Any

from harness.server import Server
from harness.stats import percentile

from .common import REPO, print_header, quiet_quantization_warnings, table, write_json

FALLBACK_CONTEXTS = [
    ["Hi, how are you doing today?"],
    ["What do you want to eat tonight?", "I don't know. Maybe pizza?"],
    ["Excuse me, where is the train station?"],
    ["I'm so tired. I worked all night.", "Why didn't you go home earlier?"],
    ["Can I help you?", "Yes, I'd like to buy a shirt."],
    ["Did you see the game last night?"],
    ["How much is this dress?", "It's fifty dollars.", "That's too expensive."],
    ["Would you like to go to the movies with me on Saturday?"],
]


def load_contexts(data_dir: str | None, k: int = 64) -> list[list[str]]:
    """Up to ``k`` contexts (the first 1-3 turns of DailyDialog test dialogs) or a fixed fallback list."""
    if data_dir and Path(data_dir).is_dir():
        from training.data import read_corpus

        out = []
        for i, d in enumerate(read_corpus("dailydialog", data_dir, "test")):
            turns = [t.text for t in d.turns][: 1 + i % 3]
            if all(len(t) <= 1000 for t in turns):  # the server's default max_turn_chars
                out.append(turns)
            if len(out) == k:
                break
        if out:
            return out
    return FALLBACK_CONTEXTS


def summarize(name: str, c: int, lat: list[float], replies: int, errors: int, wall: float) -> dict[str, Any]:
    ms = [1000 * x for x in lat]
    return {"setup": name, "concurrency": c, "requests": len(lat), "errors": errors,
            "p50_ms": percentile(ms, 50), "p95_ms": percentile(ms, 95), "p99_ms": percentile(ms, 99),
            "req_per_s": len(lat) / wall, "replies_per_s": replies / wall, "seconds": wall}


# ----- HTTP ----------------------------------------------------------------------------------------
def http_server(settings: dict[str, Any]) -> Server:
    """``python -m app serve`` on a free loopback port (harness.server.Server: ready when /readyz says 200),
    with ``settings`` as DIALOG_* variables."""
    env = {f"DIALOG_{k.upper()}": str(v) for k, v in settings.items()}
    return Server([], env={**env, "DIALOG_LOG_LEVEL": "warning"}, stop_timeout=20)


async def drive_http(url: str, contexts: list[list[str]], n: int, c: int, max_requests: int, max_seconds: float,
                     warmup: int) -> tuple[list[float], int, int, float]:
    """c concurrent clients; returns (latencies s, replies, errors, wall s) of the measured requests."""
    import httpx

    lat: list[float] = []
    replies = errors = 0
    counter = 0

    async def one(client: httpx.AsyncClient, i: int) -> tuple[float, int, bool]:
        body = {"context": contexts[i % len(contexts)], "n": n, "seed": i}
        t = time.perf_counter()
        try:
            r = await client.post(url + "/respond", json=body)
            ok = r.status_code == 200
            got = len(r.json()["replies"]) if ok else 0
        except httpx.HTTPError:
            ok, got = False, 0
        return time.perf_counter() - t, got, ok

    limits = httpx.Limits(max_connections=c, max_keepalive_connections=c)
    async with httpx.AsyncClient(timeout=60.0, limits=limits) as client:
        await asyncio.gather(*(one(client, 10**6 + j) for j in range(warmup * c)))
        t0 = time.perf_counter()
        end = t0 + max_seconds

        async def worker() -> None:
            nonlocal counter, replies, errors
            while counter < max_requests and time.perf_counter() < end:
                i = counter
                counter += 1
                dt, got, ok = await one(client, i)
                lat.append(dt)
                replies += got
                errors += not ok

        await asyncio.gather(*(worker() for _ in range(c)))
        wall = time.perf_counter() - t0
    return lat, replies, errors, wall


def bench_http(name: str, settings: dict[str, Any], contexts: list[list[str]], args: argparse.Namespace
               ) -> list[dict[str, Any]]:
    rows = []
    with http_server(settings) as server:
        for c in args.concurrency:
            lat, replies, errors, wall = asyncio.run(drive_http(server.url, contexts, args.n, c, args.requests,
                                                                args.seconds, args.warmup))
            rows.append(summarize(name, c, lat, replies, errors, wall))
            _print_row("http", rows[-1])
    return rows


# ----- engine alone ----------------------------------------------------------------------------------
def drive_engine(engine: Any, contexts: list[list[str]], n: int, c: int, max_requests: int, max_seconds: float,
                 warmup: int) -> tuple[list[float], int, int, float]:
    from app.engine import GenerationRequest

    def one(i: int) -> tuple[float, int, bool]:
        t = time.perf_counter()
        try:
            res = engine.submit(GenerationRequest(context=contexts[i % len(contexts)], n=n, seed=i)).result(60)
            return time.perf_counter() - t, res.n_returned, True
        except Exception:
            return time.perf_counter() - t, 0, False

    lock = threading.Lock()
    lat: list[float] = []
    state = {"next": 0, "replies": 0, "errors": 0}
    ws = [threading.Thread(target=lambda j=j: [one(10**6 + j * warmup + k) for k in range(warmup)])
          for j in range(c)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    t0 = time.perf_counter()
    end = t0 + max_seconds

    def worker() -> None:
        while True:
            with lock:
                if state["next"] >= max_requests or time.perf_counter() >= end:
                    return
                i = state["next"]
                state["next"] += 1
            dt, got, ok = one(i)
            with lock:
                lat.append(dt)
                state["replies"] += got
                state["errors"] += not ok

    ws = [threading.Thread(target=worker) for _ in range(c)]
    for w in ws:
        w.start()
    for w in ws:
        w.join()
    return lat, state["replies"], state["errors"], time.perf_counter() - t0


def bench_engine(name: str, settings: dict[str, Any], contexts: list[list[str]], args: argparse.Namespace
                 ) -> list[dict[str, Any]]:
    from app.engine import Engine
    from app.settings import Settings

    s = Settings.model_validate(settings)
    engine = Engine.from_bundle(s.bundle, device="cpu", torch_threads=s.torch_threads, max_n=s.max_n,
                                max_batch_rows=s.max_batch_rows, max_wait_ms=s.max_wait_ms,
                                queue_size=s.queue_size, dedupe_rounds=s.dedupe_rounds, quantize=s.quantize)
    engine.start()
    engine.warmup()
    rows = []
    try:
        for c in args.concurrency:
            lat, replies, errors, wall = drive_engine(engine, contexts, args.n, c, args.requests, args.seconds,
                                                      args.warmup)
            rows.append(summarize(name, c, lat, replies, errors, wall))
            _print_row("engine", rows[-1])
    finally:
        engine.close()
    return rows


def _print_row(mode: str, r: dict[str, Any]) -> None:
    print(f"{mode:6s} {r['setup']:18s} c={r['concurrency']:<3d} {r['requests']:4d} req, {r['errors']} err, "
          f"p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f}, p99 {r['p99_ms']:.1f}, "
          f"{r['replies_per_s']:.1f} replies/s", flush=True)


def setups(quantize: list[str], extra: dict[str, Any], batching: tuple[str, ...] = ("on", "off")
           ) -> list[tuple[str, dict[str, Any]]]:
    out = []
    for q in quantize:
        if "on" in batching:
            out.append((f"batched/{q}", {**extra, "quantize": q}))
        if "off" in batching:
            out.append((f"unbatched/{q}", {**extra, "quantize": q, "max_batch_rows": 1}))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve", description=__doc__.split("\n")[0])
    p.add_argument("--modes", default="http,engine", help="comma-separated: http, engine")
    p.add_argument("--quantize", default="none,int8", help="comma-separated decoder quantizations to run")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts")
    p.add_argument("--batching", default="on,off", help="comma-separated: on, off (max_batch_rows=1)")
    p.add_argument("-n", type=int, default=5, help="replies per request")
    p.add_argument("--requests", type=int, default=300, help="most measured requests per cell")
    p.add_argument("--seconds", type=float, default=6.0, help="most measured seconds per cell")
    p.add_argument("--warmup", type=int, default=2, help="unmeasured requests per client first")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "dailydialog"),
                   help="DailyDialog folder for the request contexts (a fixed list when absent)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="a server setting for every setup, e.g. torch_threads=1 (as DIALOG_NAME)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    extra = dict(item.split("=", 1) for item in args.set)
    args.concurrency = [int(x) for x in args.concurrency.split(",")]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    quantize = [q.strip() for q in args.quantize.split(",") if q.strip()]
    quiet_quantization_warnings()
    contexts = load_contexts(args.data)
    run_cfg = {"modes": ",".join(modes), "quantize": ",".join(quantize), "concurrency": args.concurrency,
               "n": args.n, "max_requests": args.requests, "max_seconds": args.seconds, "warmup": args.warmup,
               "contexts": len(contexts), "bundle": "model/pretrained/chat-cyclical (default)",
               "server": "defaults (max_batch_rows 64, max_wait_ms 5, torch_threads min(4, cores - 1))",
               "settings": " ".join(args.set) or "-"}
    info = print_header("serving: /respond n=5", run_cfg)
    rows: list[dict[str, Any]] = []
    for mode in modes:
        for name, settings in setups(quantize, extra, tuple(b.strip() for b in args.batching.split(","))):
            bench = bench_http if mode == "http" else bench_engine
            for r in bench(name, settings, contexts, args):
                r["mode"] = mode
                rows.append(r)
    for r in rows:
        base = next((b for b in rows if b["mode"] == r["mode"] and b["concurrency"] == r["concurrency"]
                     and b["setup"] == "unbatched/" + r["setup"].split("/")[1]), None)
        r["x_unbatched"] = r["replies_per_s"] / base["replies_per_s"] if base else float("nan")
    print()
    print(table(rows, ["mode", "setup", "concurrency", "requests", "errors", "p50_ms", "p95_ms", "p99_ms",
                       "replies_per_s", "x_unbatched"]))
    write_json(args.json, {"machine": info, "config": run_cfg, "results": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
