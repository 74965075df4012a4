"""Statistics over runs: each config's seeds as a group (mean, spread), the paired test of two groups by seed,
and the one-at-a-time sweep of a schedule setting."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .runs import ReportError, is_number, schedule_text

PARTS = (
    ("final_valid", "final validation (last step)"),
    ("best_valid", "validation at the lowest validation ELBO"),
    ("test", "test, the exported bundle"),
    ("test_best", "test, the lowest-validation-ELBO weights (train.export_best)"),
)  # fmt: skip
# Metrics where lower is better; the paired tables say which schedule is ahead on these and on the higher-is-
# better BLEU and distinct-n. KL, active units and MI are reported as measured, without a side.
LOWER_BETTER = ("rc_ppl", "rc_nll", "rc_loss", "elbo", "bow_loss", "act_loss")
HIGHER_BETTER_PREFIXES = ("bleu", "distinct")
SKIP_STATS = ("step", "beta", "seed", "n_contexts", "n_responses", "n_tokens", "n_samples", "latent_dim", "mi_ceiling")


def _numeric_keys(dicts: list[dict]) -> list[str]:
    return [k for k in (dicts[0] if dicts else {}) if k not in SKIP_STATS
            and all(is_number(d.get(k)) and math.isfinite(d[k]) for d in dicts)]


def group_runs(runs: dict[str, dict]) -> dict[str, dict]:
    """The runs of each config (its seeds) with mean, standard deviation (n - 1), min and max of every metric
    of each part: {group: {"schedule", "runs", "seeds", "test_mean": {...}, "test_std": ..., ...}}."""
    out: dict[str, dict] = {}
    for group in dict.fromkeys(r.get("group", n) for n, r in runs.items()):
        members = [n for n, r in runs.items() if r.get("group", n) == group]
        entry: dict[str, Any] = {"schedule": runs[members[0]]["schedule"], "runs": members,
                                 "seeds": [runs[n].get("seed") for n in members]}
        for part, _ in PARTS:
            dicts = [runs[n][part] for n in members if runs[n].get(part)]
            keys = _numeric_keys(dicts)
            if not dicts or not keys:
                continue
            entry[f"{part}_n"] = len(dicts)
            values = {k: np.array([d[k] for d in dicts], dtype=float) for k in keys}
            entry[f"{part}_mean"] = {k: float(v.mean()) for k, v in values.items()}
            entry[f"{part}_std"] = {k: float(v.std(ddof=1)) if len(v) > 1 else None for k, v in values.items()}
            entry[f"{part}_min"] = {k: float(v.min()) for k, v in values.items()}
            entry[f"{part}_max"] = {k: float(v.max()) for k, v in values.items()}
        out[group] = entry
    return out


def paired_test(a: list[float], b: list[float]) -> dict[str, Any]:
    """Paired comparison of a and b (one pair per seed): mean and standard deviation of a - b, Student's paired
    t statistic and its two-sided p-value (scipy.stats.ttest_rel, n - 1 degrees of freedom; None when every
    difference is the same), and on how many pairs a > b."""
    from scipy import stats

    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    d = x - y
    out: dict[str, Any] = {"n": len(d), "mean_diff": float(d.mean()),
                           "std_diff": float(d.std(ddof=1)) if len(d) > 1 else None,
                           "a_greater": int((d > 0).sum()), "t": None, "p": None}
    if len(d) > 1 and np.ptp(d) > 0:
        res = stats.ttest_rel(x, y)
        out["t"], out["p"] = float(res.statistic), float(res.pvalue)
    return out


def paired_groups(runs: dict[str, dict], groups: dict[str, dict]) -> dict[str, Any] | None:
    """With exactly two groups that share at least two seeds: paired_test of every metric, pairing runs by
    seed, for each part both groups have. None otherwise."""
    if len(groups) != 2:
        return None
    (ga, ea), (gb, eb) = groups.items()
    by_seed_a = {runs[n].get("seed"): runs[n] for n in ea["runs"]}
    by_seed_b = {runs[n].get("seed"): runs[n] for n in eb["runs"]}
    seeds = [s for s in by_seed_a if s is not None and s in by_seed_b]
    if len(seeds) < 2:
        return None
    out: dict[str, Any] = {"a": ga, "b": gb, "seeds": seeds}
    for part, _ in PARTS:
        pa: list[dict] = [by_seed_a[s].get(part) or {} for s in seeds]
        pb: list[dict] = [by_seed_b[s].get(part) or {} for s in seeds]
        if not all(pa) or not all(pb):
            continue
        in_b = set(_numeric_keys(pb))
        keys = [k for k in _numeric_keys(pa) if k in in_b]
        out[part] = {k: paired_test([d[k] for d in pa], [d[k] for d in pb]) for k in keys}
    return out


def side(key: str, mean_diff: float, a: str, b: str) -> str:
    """Which of a, b the mean difference favours on a metric with a better direction, else ""."""
    if mean_diff == 0:
        return "even"
    if key in LOWER_BETTER:
        return a if mean_diff < 0 else b
    if key.startswith(HIGHER_BETTER_PREFIXES):
        return a if mean_diff > 0 else b
    return ""


def sweep(runs: dict[str, dict], key: str) -> dict[str, Any]:
    """The runs that vary one schedule setting with the others fixed, for a plot of the metrics against it.

    Among the runs of the schedule kind whose `key` takes more than one value, the points are those whose other
    schedule settings are the most common combination (the centre of a one-at-a-time ablation); every run of
    another kind is a reference. Returns {"kind", "fixed": {...}, "points": [{"run", "x", "test"}],
    "references": [{"run", "schedule", "test"}]}, points sorted by x.
    """
    def settings(run: dict) -> dict:
        sched = run["config"].get("schedule")
        return sched if isinstance(sched, dict) else {}

    kinds = [k for k in dict.fromkeys(r["schedule"] for r in runs.values())
             if len({repr(settings(r).get(key)) for r in runs.values() if r["schedule"] == k}) > 1]
    if not kinds:
        raise ReportError(f"--against {key}: no schedule kind has runs with different schedule.{key}")
    kind = kinds[0]
    members = {n: r for n, r in runs.items() if r["schedule"] == kind}
    others = {n: tuple(sorted((k, repr(v)) for k, v in settings(r).items() if k != key)) for n, r in members.items()}
    common = max(dict.fromkeys(others.values()), key=list(others.values()).count)
    fixed = {k: settings(members[next(n for n in members if others[n] == common)])[k] for k, _ in common}
    points = sorted(({"run": n, "x": settings(r).get(key), "test": r["test"]} for n, r in members.items()
                     if others[n] == common), key=lambda p: p["x"])
    refs = [{"run": n, "schedule": schedule_text(r["config"]), "test": r["test"]}
            for n, r in runs.items() if r["schedule"] != kind]
    return {"kind": kind, "fixed": {k: v for k, v in fixed.items() if k != "kind"}, "points": points,
            "references": refs}
