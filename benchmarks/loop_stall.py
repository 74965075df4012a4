"""How long /respond keeps the server's event loop from running anything else.

    python -m benchmarks.loop_stall                      # the shipped model, 1 and 64 maximum-size requests
    python -m benchmarks.loop_stall --requests 1,16 --json out.json

The app runs under uvicorn in this process. A probe task sleeps 1 ms at a time and records how late it wakes
(the loop's lag); clients on the same loop send prebuilt HTTP requests over raw sockets, so their own work
on the loop is a socket write and a read. Each request is of the largest size the settings allow
(max_turns turns of max_turn_chars characters) and asks for little decoding (n = 1, one token, reranking
and dedupe off), so what the loop waits for is the request path, not the decoding. Reported per round (medians over
``--repeats`` rounds): the loop thread's CPU time while the round's requests were in flight (the work done
on the loop: HTTP parsing, validation, whatever the route runs there), per request, measured in rounds
without the probe; the longest lag, in rounds with it; and the wall time. The CPU time is a count of work that a busy machine does not
disturb; the lags are not: other threads of the process (the batcher, a preparing thread) take the
interpreter lock in turns with the loop, and on a loaded machine the operating system adds its own delays.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from typing import Any

from harness.server import free_port, wait_ready

from .common import print_header, table, write_json

FILLER = ("well I think that we should go to the market tomorrow morning because they have fresh bread and "
         "cheese, don't you? Really! It's 5 o'clock... okay").split()


def max_size_context(turns: int, chars: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    out = []
    for _ in range(turns):
        text = ""
        while len(text) < chars:
            text += rng.choice(FILLER) + " "
        out.append(text[:chars].strip() or "hi")
    return out


def http_request(port: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body).encode()
    head = (f"POST /respond HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
    return head + data


async def send(port: int, raw: bytes) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(raw)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    await reader.read()  # to the end: the server closes the connection
    writer.close()
    return status


class LagProbe:
    """Sleeps ``period`` s at a time; ``lags`` holds how late each wake-up came, with its time."""

    def __init__(self, period: float = 0.001):
        self.period = period
        self.lags: list[tuple[float, float]] = []
        self._stop = False

    async def run(self) -> None:
        while not self._stop:
            t = time.perf_counter()
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            self.lags.append((now, max(0.0, now - t - self.period)))

    def window(self, start: float, end: float) -> list[float]:
        return [lag for t, lag in self.lags if start <= t <= end]

    def stop(self) -> None:
        self._stop = True


async def measure(settings: dict[str, Any], rounds: list[int], repeats: int) -> list[dict[str, Any]]:
    import uvicorn

    from app.main import create_app
    from app.settings import Settings

    port = free_port()
    s = Settings.model_validate({**settings, "host": "127.0.0.1", "port": port})
    server = uvicorn.Server(uvicorn.Config(create_app(s), host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    await asyncio.to_thread(wait_ready, f"http://127.0.0.1:{port}", 300.0)
    body = {"context": max_size_context(s.max_turns, s.max_turn_chars, 0), "n": 1, "max_tokens": 1,
            "rerank": False, "dedupe": False, "seed": 0}
    raw = http_request(port, body)
    async def round_(k: int) -> tuple[float, float, float]:
        """(wall s, loop-thread CPU s, t0) of k concurrent requests."""
        await asyncio.sleep(0.05)
        t0, c0 = time.perf_counter(), time.thread_time()
        statuses = await asyncio.gather(*(send(port, raw) for _ in range(k)))
        t1, c1 = time.perf_counter(), time.thread_time()
        assert set(statuses) == {200}, statuses
        return t1 - t0, c1 - c0, t0

    rows = []
    try:
        await send(port, raw)  # warm the path once
        for k in rounds:
            cpu = [(await round_(k))[1] for _ in range(repeats)]
            probe = LagProbe()
            probing = asyncio.create_task(probe.run())
            worst, wall = [], []
            for _ in range(repeats):
                dt, _, t0 = await round_(k)
                worst.append(max(probe.window(t0, t0 + dt + 0.002), default=0.0))
                wall.append(dt)
            probe.stop()
            await probing
            rows.append({"requests": k, "body_bytes": len(raw), "loop_cpu_ms": 1000 * statistics.median(cpu),
                         "loop_cpu_ms_per_request": 1000 * statistics.median(cpu) / k,
                         "max_lag_ms": 1000 * statistics.median(worst), "wall_ms": 1000 * statistics.median(wall),
                         "repeats": repeats})
    finally:
        server.should_exit = True
        await serving
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="a bundle folder (default: the shipped model)")
    p.add_argument("--requests", default="1,64", help="concurrent requests per round, comma-separated")
    p.add_argument("--repeats", type=int, default=5, help="rounds of each size (the medians are reported)")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    settings = {"bundle": args.bundle, "device": "cpu", "torch_threads": 1, "queue_size": 256, "warmup": True}
    info = print_header("event-loop stall of /respond", {**vars(args), **settings})
    rows = asyncio.run(measure(settings, [int(k) for k in args.requests.split(",")], args.repeats))
    print(table(rows, ["requests", "body_bytes", "loop_cpu_ms", "loop_cpu_ms_per_request", "max_lag_ms",
                       "wall_ms"]))
    payload = {"machine": info, "settings": settings, "results": rows}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
