"""The one percentile of every latency figure (docs/benchmarks.md, docs/reliability.md)."""
from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) of ``values``: with x_0 <= ... <= x_(n-1) sorted, the value at rank
    k = (n - 1) q / 100, interpolated linearly between x_floor(k) and x_ceil(k) (numpy's default method, type 7
    of Hyndman and Fan). nan for no values. Every p50/p95/p99 of docs/benchmarks.md and docs/reliability.md
    comes from here."""
    if not values:
        return float("nan")
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)
