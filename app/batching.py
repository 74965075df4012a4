"""Micro-batching: one worker thread collects rows from concurrent requests into shared decode calls.

Requests queue per client (:class:`FairQueue`) and the worker takes them round-robin over the clients with
requests waiting, so a client with many queued requests delays one with a single request by at most one request
of its own per step, not by its whole backlog; ``max_per_client`` caps a client's admitted requests (QueueFull
with ``reason`` "client_limit" past it, "queue_full" past the queue size).

The batcher knows nothing about the model. A job exposes ``pending_rows`` (rows it wants decoded in the next
step), ``done`` and ``future``; the engine's ``step(jobs)`` does the torch work for a list of jobs. A job may
take several steps (dedupe draws more rows), so it stays in the active set until it is done.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, Protocol

log = logging.getLogger(__name__)


class QueueFull(RuntimeError):
    """Too many requests admitted (``reason`` "queue_full"), or too many of one client's ("client_limit");
    retry later."""

    def __init__(self, msg: str, reason: str = "queue_full"):
        super().__init__(msg)
        self.reason = reason


class FairQueue:
    """Jobs queued per client and taken round-robin over the clients that have some: a client's next job comes
    after one job of every other waiting client. Thread-safe; ``get`` waits up to ``timeout`` seconds (None:
    forever) and raises queue.Empty."""

    def __init__(self) -> None:
        self._queues: dict[str, deque[Any]] = {}  # insertion order is the round-robin order
        self._cv = threading.Condition()

    def put(self, job: Any, client: str = "") -> None:
        with self._cv:
            self._queues.setdefault(client, deque()).append(job)
            self._cv.notify()

    def get(self, timeout: float | None = None) -> Any:
        with self._cv:
            if not self._cv.wait_for(lambda: bool(self._queues), timeout):
                raise queue.Empty
            client = next(iter(self._queues))
            q = self._queues.pop(client)
            job = q.popleft()
            if q:
                self._queues[client] = q  # to the back of the round
            return job

    def get_nowait(self) -> Any:
        return self.get(timeout=0)


class EngineClosed(RuntimeError):
    """The engine is not running (not started yet, or draining)."""


class Job(Protocol):
    future: Future[Any]
    t_submit: float

    @property
    def pending_rows(self) -> int: ...

    @property
    def done(self) -> bool: ...


class Observer:
    """Hooks for metrics; the default does nothing."""

    def queue_wait(self, seconds: float) -> None: ...

    def batch(self, rows: int) -> None: ...


_STOP = object()


class Batcher:
    def __init__(self, step: Callable[[list[Any]], None], max_batch_rows: int, max_wait_s: float,
                 queue_size: int, observer: Observer | None = None, max_per_client: int = 0):
        self._step = step
        self.max_batch_rows = max_batch_rows
        self.max_wait_s = max_wait_s
        self.queue_size = queue_size
        self.observer = observer or Observer()
        self.max_per_client = max_per_client  # 0: no cap
        self._q = FairQueue()
        self._per_client: dict[str, int] = {}
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._admitted = 0
        self._closed = True
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and not self._closed

    @property
    def admitted(self) -> int:
        return self._admitted

    def start(self) -> None:
        if self._thread is not None:
            return
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="dialog-batcher", daemon=True)
        self._thread.start()

    def submit(self, job: Job, client: str = "") -> None:
        """Admit ``job`` for ``client`` (any key: the caller decides what a client is)."""
        with self._lock:
            if self._closed:
                raise EngineClosed("the engine is not accepting requests")
            if self._admitted >= self.queue_size:
                raise QueueFull(f"{self._admitted} requests in progress (queue size {self.queue_size})")
            mine = self._per_client.get(client, 0)
            if self.max_per_client and mine >= self.max_per_client:
                raise QueueFull(f"this client has {mine} requests in progress (at most {self.max_per_client} "
                                "each)", reason="client_limit")
            self._admitted += 1
            self._per_client[client] = mine + 1
        job.t_submit = time.monotonic()
        job.future.add_done_callback(lambda _: self._release(client))
        self._q.put(job, client)

    def _release(self, client: str) -> None:
        with self._lock:
            self._admitted -= 1
            left = self._per_client.get(client, 1) - 1
            if left > 0:
                self._per_client[client] = left
            else:
                self._per_client.pop(client, None)
            self._idle.notify_all()

    def close(self, timeout: float = 10.0) -> bool:
        """Stop admitting, let admitted requests finish for up to ``timeout`` s, stop the thread.

        Returns True when everything admitted finished in time; requests still running then fail."""
        with self._lock:
            self._closed = True
            drained = self._idle.wait_for(lambda: self._admitted == 0, timeout=timeout)
        if self._thread is not None:
            self._q.put(_STOP, "\x00stop")
            self._thread.join(timeout=max(timeout, 1.0))
            self._thread = None
        while True:  # fail whatever never ran
            try:
                job = self._q.get_nowait()
            except queue.Empty:
                break
            if job is not _STOP:
                _fail(job, EngineClosed("the engine stopped before this request ran"))
        return drained

    # ----- the worker thread ----------------------------------------------------------------------
    def _loop(self) -> None:
        active: list[Any] = []
        while True:
            if not active:
                job = self._q.get()
                if job is _STOP:
                    break
                active.append(job)
                self._started(job)
            deadline = time.monotonic() + self.max_wait_s
            stop = False
            while sum(j.pending_rows for j in active) < self.max_batch_rows:
                if self._admitted <= len(active):
                    # nobody else is admitted: waiting would only delay a lone request (and each of its
                    # redraw rounds); requests arriving during the step join the next one
                    break
                try:
                    job = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if job is _STOP:
                    stop = True
                    break
                active.append(job)
                self._started(job)
            active = [j for j in active if not j.future.done()]  # cancelled (timed out) jobs leave
            if active:
                try:
                    self._step(active)
                except Exception as e:  # the step isolates per-job errors; this is a last resort
                    log.exception("batch step failed")
                    for j in active:
                        _fail(j, e)
            active = [j for j in active if not j.done and not j.future.done()]
            if stop:
                for j in active:
                    _fail(j, EngineClosed("the engine stopped before this request finished"))
                break

    def _started(self, job: Any) -> None:
        self.observer.queue_wait(time.monotonic() - job.t_submit)


def _fail(job: Any, exc: BaseException) -> None:
    if not job.future.done():
        try:
            job.future.set_exception(exc)
        except Exception:  # cancelled meanwhile
            pass
