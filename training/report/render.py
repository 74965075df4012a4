"""Rendering the report: report.md (tables of the runs, their validation and test metrics, the seed groups and
the paired tests, the plots) and the strict-JSON content of report.json."""

from __future__ import annotations

import math
from typing import Any

from .runs import is_number, model_variant, schedule_text
from .stats import PARTS, side

# Rows of the tables in this order first; any other numeric key follows, sorted.
VALID_ORDER = ("step", "rc_ppl", "rc_loss", "kl", "elbo", "bow_loss")
TEST_ORDER = (
    "rc_ppl", "rc_nll", "kl", "elbo", "bow_loss", "active_units", "latent_dim", "mi",
    *(f"bleu{n}_{kind}" for kind in ("precision", "recall") for n in range(1, 5)),
    "distinct1_intra", "distinct2_intra", "distinct1_inter", "distinct2_inter", "mean_len", "n_contexts",
)  # fmt: skip
NOT_EVALUATED = "not evaluated"
CAPTIONS = {
    "beta": "KL weight beta against the step",
    "kl": "KL term against the step (training; faint: raw, solid: moving average)",
    "rc_loss": "reconstruction loss against the step (training; faint: raw, solid: moving average)",
    "valid": "validation rc_ppl and KL against the step",
}
# The fields of each run that report.json holds.
RUN_FIELDS = ("schedule", "seed", "group", "model", "dir", "config", "final_valid", "best_valid", "last_train",
              "test", "test_best")  # fmt: skip


def fmt(v: Any) -> str:
    """A table cell: integers as they are, floats to 4 decimals (2 from 100 up), NaN as "nan"."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.2f}" if abs(v) >= 100 else f"{v:.4f}"
    text = str(v)
    return text[:12] if len(text) == 64 and all(c in "0123456789abcdef" for c in text) else text  # sha256


def mi_cell(test: dict) -> str:
    """The mutual information with its ceiling beside it: the estimate cannot exceed log N over the N examples
    it averages over, so a value near the ceiling says only that the posteriors barely overlap. Evaluations
    from before the ceiling was recorded averaged per-batch estimates, each capped at log(batch size)."""
    mi = test.get("mi")
    if not is_number(mi) or not math.isfinite(mi):
        return fmt(mi)
    ceiling = test.get("mi_ceiling")
    if not is_number(ceiling):
        return f"{fmt(mi)} (per-batch estimate: at most about log of the batch size, 4.16 for 64)"
    return f"{fmt(mi)} (ceiling {fmt(ceiling)}{', saturated' if test.get('mi_saturated') else ''})"


def _json_safe(v: Any) -> Any:
    """Strict JSON: NaN and infinities become null (the markdown report shows them as "nan" / "inf")."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


def _ordered_keys(dicts: list[dict], order: tuple[str, ...]) -> list[str]:
    present = {k for d in dicts for k, v in d.items() if is_number(v) or v is None}
    return [k for k in order if k in present] + sorted(present - set(order))


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A markdown table; with `numeric` every column but the first is right-aligned."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    rule = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in esc[1:]]


def markdown(title: str, runs: dict[str, dict], plots: dict[str, str], notes: str | None,
             groups: dict[str, dict], paired: dict[str, Any] | None) -> str:
    """report.md: `groups` and `paired` are :func:`~training.report.stats.group_runs` and
    :func:`~training.report.stats.paired_groups` of `runs`."""
    names = list(runs)
    lines = [f"# {title}", "", "## Runs", ""]
    rows = []
    for name, run in runs.items():
        cfg = run["config"]
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        rows.append([
            name, schedule_text(cfg), model_variant(cfg), fmt(data.get("corpus")), fmt(train.get("steps")),
            fmt(train.get("seed")), fmt(run["last_train"].get("step")), f"`{run['dir']}`",
        ])  # fmt: skip
    lines += _table(["run", "schedule", "model", "corpus", "steps", "seed", "last step logged", "dir"], rows,
                    numeric=False)

    lines += ["", "## Final validation", ""]
    valids = [run["final_valid"] for run in runs.values()]
    if any(valids):
        keys = _ordered_keys(valids, VALID_ORDER)
        body = [[k] + [fmt(v.get(k)) if v else "no validation" for v in valids] for k in keys]
        lines += _table(["metric", *names], body)
    else:
        lines.append("No run logged a validation row.")

    lines += ["", "## Test", ""]
    tests = [run["test"] for run in runs.values()]
    if any(t is not None for t in tests):
        keys = [k for k in _ordered_keys([t for t in tests if t], TEST_ORDER) if k != "mi_ceiling"]  # beside mi
        body = [["evaluated"] + [("yes" if t is not None else NOT_EVALUATED) for t in tests]]
        meta = [k for k in ("split", "bundle_sha256") if any(t and k in t for t in tests)]
        body += [[k] + [(mi_cell(t) if k == "mi" else fmt(t.get(k))) if t is not None else "–" for t in tests]
                 for k in meta + keys]
        lines += _table(["metric", *names], body)
        missing = [n for n, t in zip(names, tests) if t is None]
        if missing:
            lines += ["", f"{NOT_EVALUATED}: " + ", ".join(missing) + " (no eval/test.json)."]
    else:
        lines.append(f"No run has eval/test.json: {NOT_EVALUATED}.")

    if len(groups) < len(runs):  # several seeds of one config: mean and spread, then the paired comparison
        lines += _group_tables(groups)
    if paired:
        lines += _paired_tables(paired)

    lines += ["", "## Plots", ""]
    for key, file in plots.items():
        caption = CAPTIONS.get(key) or (f"test metrics (exported bundle) against schedule.{key[8:]}; dashed: the runs of "
                                        "other schedule kinds" if key.startswith("against-") else key)
        lines += [f"![{caption}]({file})", ""]

    if notes:
        lines += ["## Notes", "", notes.rstrip("\n"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def _group_tables(groups: dict[str, dict]) -> list[str]:
    lines: list[str] = []
    names = list(groups)
    for part, label in PARTS:
        present = [g for g in names if groups[g].get(f"{part}_mean")]
        if not present:
            continue
        order = VALID_ORDER if "valid" in part else TEST_ORDER
        keys = _ordered_keys([groups[g][f"{part}_mean"] for g in present], order)
        lines += ["", f"## Mean ± standard deviation over seeds: {label}", ""]
        body = []
        for k in keys:
            row = [k]
            for g in present:
                mean, std = groups[g][f"{part}_mean"].get(k), groups[g][f"{part}_std"].get(k)
                row.append(f"{fmt(mean)} ± {fmt(std)}" if std is not None else fmt(mean))
            body.append(row)
        header = [f"{g} ({groups[g][f'{part}_n']} seeds)" for g in present]
        lines += _table(["metric", *header], body, numeric=False)
    return lines


def _paired_tables(paired: dict[str, Any]) -> list[str]:
    a, b = paired["a"], paired["b"]
    lines: list[str] = []
    for part, label in PARTS:
        if part not in paired:
            continue
        order = VALID_ORDER if "valid" in part else TEST_ORDER
        stats_ = paired[part]
        keys = [k for k in order if k in stats_] + sorted(set(stats_) - set(order))
        lines += ["", f"## Paired across seeds {', '.join(map(str, paired['seeds']))}: {a} minus {b}, {label}", ""]
        body = [[k, f"{fmt(st['mean_diff'])} ± {fmt(st['std_diff'])}", fmt(st["t"]), fmt(st["p"]),
                 f"{st['a_greater']} of {st['n']}", side(k, st["mean_diff"], a, b)] for k, st in
                ((k, stats_[k]) for k in keys)]
        lines += _table(["metric", "difference: mean ± sd", "paired t", "p (two-sided)", f"{a} higher on",
                         "ahead (mean)"], body, numeric=False)
    lines += ["", f"The paired t-test has n - 1 = {len(paired['seeds']) - 1} degrees of freedom; with so few seeds "
              "only a consistent difference reaches a small p."]
    return lines


def report_json(title: str, notes: str | None, plots: dict[str, str], runs: dict[str, dict],
                sweeps: dict[str, Any], groups: dict[str, dict], paired: dict[str, Any] | None) -> dict:
    """The content of report.json, strict JSON (NaN and infinities as None)."""
    report: dict[str, Any] = {
        "title": title,
        "notes": notes,
        "plots": plots,
        "runs": {name: {k: run[k] for k in RUN_FIELDS} for name, run in runs.items()},
    }
    if sweeps:
        report["sweeps"] = sweeps
    report["groups"] = groups
    report["paired"] = paired
    return _json_safe(report)
