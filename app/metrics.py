"""Prometheus metrics, in a registry of the app's own (so several apps in one process never collide)."""
from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from .batching import Observer

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("dialog_http_requests", "HTTP requests by route, method and status",
                                ["route", "method", "status"], registry=r)
        self.latency = Histogram("dialog_http_request_duration_seconds", "HTTP request latency by route",
                                 ["route"], buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("dialog_http_requests_in_flight", "HTTP requests being served", registry=r)
        self.active = 0  # the same count as a plain int, for the drain on shutdown
        self.queue_wait = Histogram("dialog_queue_wait_seconds", "time a /respond request waited for the batcher",
                                    buckets=LATENCY_BUCKETS, registry=r)
        self.batch_rows = Histogram("dialog_batch_rows", "rows (context, latent) per decode call",
                                    buckets=ROWS_BUCKETS, registry=r)
        self.replies = Counter("dialog_replies", "replies returned", registry=r)
        self.duplicates = Counter("dialog_duplicates_dropped", "replies dropped as duplicates", registry=r)
        self.empty = Counter("dialog_empty_dropped", "replies dropped as empty (never returned)", registry=r)
        self.rejected = Counter("dialog_rejected", "requests refused with 429, by reason (queue_full: the queue "
                                "size; client_limit: one client's cap)", ["reason"], registry=r)
        self.ready = Gauge("dialog_ready", "1 when the service is ready for traffic", registry=r)

    def observer(self) -> Observer:
        metrics = self

        class _Obs(Observer):
            def queue_wait(self, seconds: float) -> None:
                metrics.queue_wait.observe(seconds)

            def batch(self, rows: int) -> None:
                metrics.batch_rows.observe(rows)

        return _Obs()
