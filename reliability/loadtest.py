"""A bounded load test on loopback: N concurrent clients send a mix of valid and invalid requests to a
server started as a child process, for a fixed time; statuses, latency and the server's RSS are recorded.

    python -m reliability.loadtest --duration 60 --clients 64 --out load.json

Passes (exit 0) when every response has an intended status (200; the expected 4xx for an invalid request;
429 with Retry-After when shedding; 503 with Retry-After when not ready; 504 on a timeout), no request fails
at the transport level, memory stays flat after warm-up (growth under --max-rss-growth-mb) and the server
still answers afterwards. With --drain it then sends SIGTERM under load and checks the drain (see drain()).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import random
import signal
import statistics
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness.server import Server, rss_bytes
from harness.stats import percentile
from harness.words import sentence

log = logging.getLogger("reliability.loadtest")

SHED = {429, 503, 504}  # what a valid request may get instead of 200 under load


@dataclass(frozen=True)
class Req:
    kind: str
    method: str
    path: str
    expect: frozenset[int]  # intended statuses besides those in SHED (for /respond)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None


def _sentence(rng: random.Random) -> str:
    return sentence(rng, 2, 10)


def make_request(rng: random.Random, invalid_fraction: float, max_body_bytes: int) -> Req:
    """One request of the mix: valid /respond calls, ops calls and invalid inputs of many kinds."""
    respond_ok = frozenset({200}) | SHED
    if rng.random() >= invalid_fraction:
        if rng.random() < 0.1:
            path = rng.choice(["/healthz", "/readyz", "/info", "/metrics"])
            return Req("ops", "GET", path, frozenset({200, 503}))
        body: dict[str, Any] = {"context": [_sentence(rng) for _ in range(rng.randint(1, 4))],
                                "n": rng.randint(1, 5)}
        if rng.random() < 0.5:
            body["seed"] = rng.randrange(2**31)
        if rng.random() < 0.3:
            body.update(strategy="sample", temperature=round(rng.uniform(0.5, 1.5), 2), top_p=0.9)
        return Req("valid", "POST", "/respond", respond_ok, json=body)
    ok = {"context": ["hi there"], "n": 2}
    choices: list[tuple[str, dict[str, Any]]] = [
        ("empty_context", {"json": {**ok, "context": []}}),
        ("blank_turn", {"json": {**ok, "context": ["   "]}}),
        ("control_chars", {"json": {**ok, "context": ["\u0000\u0007\u200b\u2028"]}}),
        ("long_turn", {"json": {**ok, "context": ["x" * 5000]}}),
        ("many_turns", {"json": {**ok, "context": ["hi"] * 500}}),
        ("bad_n", {"json": {**ok, "n": rng.choice([0, -1, 10**9, "many", None])}}),
        ("bad_types", {"json": {"context": rng.choice([None, 3, "hi", {"a": 1}, [1, 2]])}}),
        ("unknown_field", {"json": {**ok, "evil": "x"}}),
        ("nan", {"content": b'{"context": ["hi"], "latents": [[NaN]]}'}),
        ("bad_json", {"content": rng.choice([b"{not json", b"", b"\xff\xfe\x00", b"[" * 10000])}),
        ("deep_json", {"content": b'{"context": ' + b"[" * 5000 + b"]" * 5000 + b"}"}),
        ("too_large", {"content": b'{"context": ["' + b"a" * (max_body_bytes + 10) + b'"]}'}),
    ]
    kind, kw = rng.choice(choices)
    # FastAPI answers 400 to a body its parser cannot take (not UTF-8, nested too deep), 422 to malformed JSON
    expect = {"too_large": {413}, "bad_json": {400, 422}, "deep_json": {400, 422}}.get(kind, {422})
    if kind == "too_large":
        return Req(kind, "POST", "/respond", frozenset(expect), **kw, headers={"content-type": "application/json"})
    if "content" in kw:
        return Req(kind, "POST", "/respond", frozenset(expect), content=kw["content"],
                   headers={"content-type": "application/json"})
    if rng.random() < 0.1:
        return Req("unknown_path", "GET", f"/nope/{rng.randrange(10**6)}", frozenset({404}))
    if rng.random() < 0.05:
        return Req("wrong_method", "GET", "/respond", frozenset({405}))
    return Req(kind, "POST", "/respond", frozenset(expect), json=kw["json"])


@dataclass
class Tally:
    statuses: Counter[int] = field(default_factory=Counter)
    by_kind: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    latency_s: list[float] = field(default_factory=list)  # every answered request
    latency_ok_s: list[float] = field(default_factory=list)  # 200s of /respond
    unintended: list[dict[str, Any]] = field(default_factory=list)
    transport_errors: Counter[str] = field(default_factory=Counter)
    missing_retry_after: int = 0
    max_error_body: int = 0
    sent: int = 0

    def record(self, req: Req, status: int, dt: float, headers: httpx.Headers, body: bytes) -> None:
        self.statuses[status] += 1
        self.by_kind[req.kind][status] += 1
        self.latency_s.append(dt)
        if req.kind == "valid" and status == 200:
            self.latency_ok_s.append(dt)
        if status >= 400:
            self.max_error_body = max(self.max_error_body, len(body))
        if status in (429, 503) and "retry-after" not in headers:
            self.missing_retry_after += 1
        allowed = req.expect | ({503} if req.path == "/respond" else set())  # draining / not ready
        if status not in allowed and len(self.unintended) < 20:
            self.unintended.append({"kind": req.kind, "status": status, "body": body[:200].decode("utf-8", "replace")})
        elif status not in allowed:
            self.unintended.append({"kind": req.kind, "status": status})


async def _client(i: int, url: str, deadline: float, tally: Tally, seed: int, invalid_fraction: float,
                  max_body_bytes: int, timeout: float) -> None:
    rng = random.Random(seed * 1000 + i)
    async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
        while time.monotonic() < deadline:
            req = make_request(rng, invalid_fraction, max_body_bytes)
            tally.sent += 1
            t0 = time.perf_counter()
            try:
                r = await client.request(req.method, req.path, json=req.json, content=req.content,
                                         headers=req.headers)
            except httpx.TransportError as e:
                # A 413 sent before the client finished writing a large body may reset the connection;
                # the server answered as intended, so only count it apart.
                key = f"{req.kind}:{type(e).__name__}"
                tally.transport_errors[key] += 1
                continue
            tally.record(req, r.status_code, time.perf_counter() - t0, r.headers, r.content)


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every_s: float = 0.5):
        super().__init__(daemon=True)
        self.pid, self.every_s = pid, every_s
        self.samples: list[tuple[float, int]] = []
        self.stop = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            self.samples.append((time.monotonic() - self.t0, rss_bytes(self.pid)))
            self.stop.wait(self.every_s)


def memory_summary(samples: list[tuple[float, int]], warmup_s: float) -> dict[str, Any]:
    """RSS (MiB) at start, just after warm-up and at the end; growth = median of the last 10 % of the
    samples minus the median of the first 10 % after warm-up."""
    mib = 1 << 20
    after = [r for t, r in samples if t >= warmup_s and r > 0]
    if not after:
        return {}
    k = max(1, len(after) // 10)
    first, last = statistics.median(after[:k]), statistics.median(after[-k:])
    return {"start_mib": round(samples[0][1] / mib, 1), "after_warmup_mib": round(first / mib, 1),
            "end_mib": round(last / mib, 1), "max_mib": round(max(r for _, r in samples) / mib, 1),
            "growth_after_warmup_mib": round((last - first) / mib, 1), "samples": len(samples)}


async def run_load(url: str, duration: float, clients: int, seed: int = 0, invalid_fraction: float = 0.3,
                   max_body_bytes: int = 256 * 1024, timeout: float = 60.0) -> Tally:
    tally = Tally()
    deadline = time.monotonic() + duration
    await asyncio.gather(*(_client(i, url, deadline, tally, seed, invalid_fraction, max_body_bytes, timeout)
                           for i in range(clients)))
    return tally


def summarise(tally: Tally, duration: float, clients: int) -> dict[str, Any]:
    def ms(values: list[float], q: float | None = None) -> float | None:
        """The q-th percentile (harness.stats.percentile), or the maximum, in ms; None for no values."""
        if not values:
            return None
        return round(1000 * (max(values) if q is None else percentile(values, q)), 1)

    answered = sum(tally.statuses.values())
    return {
        "clients": clients, "duration_s": duration, "requests_sent": tally.sent, "responses": answered,
        "throughput_rps": round(answered / duration, 1),
        "statuses": {str(k): v for k, v in sorted(tally.statuses.items())},
        "by_kind": {k: {str(s): n for s, n in sorted(c.items())} for k, c in sorted(tally.by_kind.items())},
        "unintended": len(tally.unintended), "unintended_examples": tally.unintended[:5],
        "transport_errors": dict(tally.transport_errors),
        "missing_retry_after": tally.missing_retry_after, "max_error_body_bytes": tally.max_error_body,
        "latency_ms": {"p50": ms(tally.latency_s, 50), "p90": ms(tally.latency_s, 90),
                       "p99": ms(tally.latency_s, 99), "max": ms(tally.latency_s)},
        "latency_ok_ms": {"p50": ms(tally.latency_ok_s, 50), "p90": ms(tally.latency_ok_s, 90),
                          "p99": ms(tally.latency_ok_s, 99), "max": ms(tally.latency_ok_s)},
    }


def drain(srv: Server, in_flight: int = 8, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """SIGTERM while ``in_flight`` requests run; then poll /readyz and POST /respond until the process exits,
    both over a keep-alive connection opened before the signal (as a proxy or load balancer holds one) and
    over new connections. Intended: in-flight requests finish with 200; readiness and new requests get 503
    with Retry-After while the server drains (its socket stays open for the drain grace period and while
    requests are in flight; after that a new connection is refused); the process exits within its drain
    timeout plus the grace period."""
    body = body or {"context": ["hello, how are you today?"], "n": 16, "strategy": "sample"}
    results: list[Any] = [None] * in_flight

    def one(i: int) -> None:
        try:
            results[i] = httpx.post(f"{srv.url}/respond", json={**body, "seed": i}, timeout=60).status_code
        except httpx.TransportError as e:
            results[i] = type(e).__name__

    threads = [threading.Thread(target=one, args=(i,)) for i in range(in_flight)]
    for t in threads:
        t.start()
    kept = httpx.Client(base_url=srv.url, timeout=2)
    assert kept.get("/readyz").status_code == 200  # opens the keep-alive connection
    time.sleep(0.2)  # let the requests be admitted
    assert srv.proc is not None
    t0 = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    seen: dict[str, Counter[str]] = defaultdict(Counter)
    first: dict[str, str] = {}
    while srv.proc.poll() is None and time.monotonic() - t0 < 60:
        for conn, client in (("keepalive", kept), ("new", None)):
            for path in ("/readyz", "/respond"):
                key = f"{conn} {path}"
                try:
                    if client is None:
                        r = httpx.request("GET" if path == "/readyz" else "POST", srv.url + path, timeout=2,
                                          json=None if path == "/readyz" else {"context": ["hi"]})
                    else:
                        r = client.request("GET" if path == "/readyz" else "POST", path,
                                           json=None if path == "/readyz" else {"context": ["hi"]})
                    out = str(r.status_code) + ("" if r.status_code < 400 or "retry-after" in r.headers
                                                else " (no Retry-After)")
                except httpx.TransportError:
                    out = "refused"
                seen[key][out] += 1
                first.setdefault(key, f"{out} after {1000 * (time.monotonic() - t0):.0f} ms")
        time.sleep(0.01)
    kept.close()
    for t in threads:
        t.join(60)
    code = srv.proc.wait(60)
    return {"exit_status": code, "exit_after_s": round(time.monotonic() - t0, 2),
            "in_flight": dict(Counter(map(str, results))), "after_sigterm": {k: dict(v) for k, v in seen.items()},
            "first_after_sigterm": first}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m reliability.loadtest", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--duration", type=float, default=60.0, help="seconds of load (default 60)")
    p.add_argument("--clients", type=int, default=64, help="concurrent clients (default 64)")
    p.add_argument("--invalid-fraction", type=float, default=0.3, help="share of invalid requests (default 0.3)")
    p.add_argument("--warmup", type=float, default=None, help="seconds excluded from the memory check "
                   "(default: a sixth of --duration)")
    p.add_argument("--bundle", help="model bundle (default: the server's default bundle)")
    p.add_argument("--queue-size", type=int, default=16, help="server queue limit (default 16: low enough to shed)")
    p.add_argument("--request-timeout", type=float, default=30.0, help="server per-request limit, s")
    p.add_argument("--server-arg", action="append", default=[], help="extra flag for python -m app serve")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-rss-growth-mb", type=float, default=50.0)
    p.add_argument("--drain", action="store_true", help="afterwards, SIGTERM under load and check the drain")
    p.add_argument("--out", help="write the JSON summary here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    warmup = args.duration / 6 if args.warmup is None else args.warmup
    server_args = ["--queue-size", str(args.queue_size), "--request-timeout-s", str(args.request_timeout),
                   "--log-level", "warning", *args.server_arg]
    if args.bundle:
        server_args += ["--bundle", args.bundle]
    with Server(server_args) as srv:
        info = httpx.get(f"{srv.url}/info", timeout=5).json()
        log.info("server pid %d on %s: model %s, %d clients for %g s", srv.pid, srv.url, info["model"]["name"],
                 args.clients, args.duration)
        sampler = RssSampler(srv.pid)
        sampler.start()
        tally = asyncio.run(run_load(srv.url, args.duration, args.clients, args.seed, args.invalid_fraction,
                                     info["limits"]["max_body_bytes"]))
        sampler.stop.set()
        sampler.join()
        summary = summarise(tally, args.duration, args.clients)
        summary["server"] = {"model": info["model"]["name"], "queue_size": args.queue_size,
                             "request_timeout_s": args.request_timeout, "torch_threads": info["torch_threads"]}
        summary["memory"] = memory_summary(sampler.samples, warmup)
        after = httpx.post(f"{srv.url}/respond", json={"context": ["hi"], "n": 1}, timeout=30)
        summary["after_load"] = {"respond": after.status_code,
                                 "readyz": httpx.get(f"{srv.url}/readyz", timeout=5).status_code}
        if args.drain:
            summary["drain"] = drain(srv)
    problems = check(summary, args.max_rss_growth_mb)
    summary["problems"] = problems
    text = json.dumps(summary, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    for prob in problems:
        log.error("FAIL: %s", prob)
    return 1 if problems else 0


def check(summary: dict[str, Any], max_growth_mb: float | None = None) -> list[str]:
    """What went wrong in a load run's summary; the memory is checked when it was sampled and a limit given."""
    problems = []
    if summary["unintended"]:
        problems.append(f"{summary['unintended']} responses with an unintended status: "
                        f"{summary['unintended_examples'][:2]}")
    bad_transport = {k: v for k, v in summary["transport_errors"].items() if not k.startswith("too_large:")}
    if bad_transport:
        problems.append(f"transport errors: {bad_transport}")
    if summary["missing_retry_after"]:
        problems.append(f"{summary['missing_retry_after']} 429/503 responses without Retry-After")
    growth = summary.get("memory", {}).get("growth_after_warmup_mib")
    if growth is not None and max_growth_mb is not None and growth > max_growth_mb:
        problems.append(f"RSS grew {growth} MiB after warm-up (limit {max_growth_mb})")
    if summary.get("after_load") and summary["after_load"] != {"respond": 200, "readyz": 200}:
        problems.append(f"server unhealthy after the load: {summary['after_load']}")
    d = summary.get("drain")
    if d:
        if set(d["in_flight"]) != {"200"}:
            problems.append(f"in-flight requests did not all finish during the drain: {d['in_flight']}")
        for key, counts in d["after_sigterm"].items():
            if set(counts) - {"503", "refused"}:
                problems.append(f"{key} after SIGTERM: {counts}")
        if d["exit_status"] not in (0, -15):
            problems.append(f"exit status {d['exit_status']} after SIGTERM")
    return problems


if __name__ == "__main__":
    sys.exit(main())
