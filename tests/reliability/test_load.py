"""A short load test against the real server (a child process on loopback): only intended statuses, 429 with
Retry-After when the queue is full; and SIGTERM under load: readiness 503 at once, in-flight requests
finish, new ones are refused, the process exits within its drain timeout.

The long run (64 clients, 60 s, the default model) is `python -m reliability.loadtest`; see docs/reliability.md."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx

from reliability.loadtest import check, drain, run_load, summarise
from reliability.server import Server


def test_short_load_only_intended_statuses_and_sheds_with_429(rel_bundle):
    args = ["--bundle", str(rel_bundle), "--torch-threads", "1", "--queue-size", "2", "--log-level", "warning",
            "--max-body-bytes", "65536"]
    with Server(args) as srv:
        tally = asyncio.run(run_load(srv.url, duration=5, clients=16, seed=1, max_body_bytes=65536))
        after = httpx.post(f"{srv.url}/respond", json={"context": ["hi"], "n": 1}, timeout=30).status_code
    s = summarise(tally, 5, 16)
    assert check(s, max_growth_mb=1e9) == [], s
    assert after == 200
    assert s["statuses"].get("200", 0) > 20 and s["statuses"].get("429", 0) > 0, s["statuses"]
    too_large = s["by_kind"].get("too_large", {})
    assert s["statuses"].get("422", 0) > 0 and set(too_large) <= {"413"}, s["by_kind"]
    assert s["missing_retry_after"] == 0
    assert s["max_error_body_bytes"] < 4096


def test_sigterm_under_load_drains(rel_bundle):
    # one decode row per request (reranking off, no batching): the drain, not the decoding, is under test
    args = ["--bundle", str(rel_bundle), "--torch-threads", "1", "--max-batch-rows", "1", "--drain-timeout-s", "5",
            "--rerank", "false"]
    with Server(args) as srv:
        d = drain(srv, in_flight=8)
        log = srv.log()
    assert d["in_flight"] == {"200": 8}, d
    after = d["after_sigterm"]
    assert all(set(c) <= {"503", "refused"} for c in after.values()), d
    # readiness and /respond answer 503 at once, over a connection held open and over new connections:
    # the socket stays open for the drain grace period (and while requests are in flight)
    for key in ("keepalive /readyz", "keepalive /respond", "new /readyz", "new /respond"):
        assert d["first_after_sigterm"][key].startswith("503"), d
        assert "503" in after[key], d
    assert d["exit_status"] in (0, -15) and d["exit_after_s"] < 5, d
    assert "draining" in log


def test_sigterm_with_more_work_than_the_drain_timeout_still_exits_in_time(rel_bundle):
    """A backlog far longer than the drain timeout: the process still exits about when the timeout says;
    requests cut off get 503 or a closed connection, never a hang."""
    timeout = 2.0
    args = ["--bundle", str(rel_bundle), "--torch-threads", "1", "--max-batch-rows", "1", "--queue-size", "200",
            "--drain-timeout-s", str(timeout)]
    body = {"context": ["hello there, how are you?"], "n": 16, "strategy": "sample"}
    results: list[object] = []
    with Server(args) as srv:
        def one(i: int) -> None:
            try:
                results.append(httpx.post(f"{srv.url}/respond", json={**body, "seed": i}, timeout=60).status_code)
            except httpx.TransportError as e:
                results.append(type(e).__name__)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(150)]
        for t in threads:
            t.start()
        time.sleep(1.0)
        code, took = srv.terminate(timeout=30)
        for t in threads:
            t.join(30)
    assert code in (0, -15), code
    assert took < timeout + 3, f"exit took {took:.1f} s with a {timeout:g} s drain timeout"
    assert set(map(str, results)) <= {"200", "503", "RemoteProtocolError", "ReadError", "ConnectError"}, results
