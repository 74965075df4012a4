"""The `compare` report over training runs (`python -m training compare`): a markdown table, a JSON summary and
plots.

A run directory holds `metrics.jsonl` (training rows; validation rows carry "split": "valid"), `config.json`
(the resolved training config) and optionally `eval/test.json` (the evaluator's output). `compare` reads
several and writes `report.md`, `report.json` and the PNG plots beta / kl / rc_loss against the step for all
runs on shared axes (the layout of Fu et al. 2019, fig. 1) and validation rc_ppl / kl against the step.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

log = logging.getLogger(__name__)

TRAIN_PLOTS = ("beta", "kl", "rc_loss")
VALID_PLOT_KEYS = ("rc_ppl", "kl")
# Rows of the tables in this order first; any other numeric key follows, sorted.
VALID_ORDER = ("step", "rc_ppl", "rc_loss", "kl", "elbo", "bow_loss")
TEST_ORDER = (
    "rc_ppl", "rc_nll", "kl", "elbo", "bow_loss", "active_units", "latent_dim", "mi",
    *(f"bleu{n}_{kind}" for kind in ("precision", "recall") for n in range(1, 5)),
    "distinct1_intra", "distinct2_intra", "distinct1_inter", "distinct2_inter", "mean_len", "n_contexts",
)  # fmt: skip
NOT_EVALUATED = "not evaluated"


# --------------------------------------------------------------------------------------------- reading


def read_metrics(path: Path) -> tuple[list[dict], list[dict]]:
    """Training rows and validation rows of a metrics.jsonl, each sorted by step; bad lines are skipped."""
    train: list[dict] = []
    valid: list[dict] = []
    if not path.is_file():
        log.warning("%s: no metrics file", path)
        return train, valid
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            log.warning("%s:%d: not JSON, skipped", path, lineno)  # e.g. a line cut off by a killed run
            continue
        if not isinstance(row, dict) or "step" not in row:
            continue
        split = row.get("split", "train")
        if split == "train":
            train.append(row)
        elif split == "valid":
            valid.append(row)
    train.sort(key=lambda r: r["step"])
    valid.sort(key=lambda r: r["step"])
    return train, valid


def _read_json(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        log.warning("%s: not valid JSON, ignored", path)
        return None
    return data if isinstance(data, dict) else None


def _schedule_kind(config: dict) -> str:
    schedule = config.get("schedule")
    if isinstance(schedule, dict):
        return str(schedule.get("kind", "unknown"))
    return str(schedule) if schedule else "unknown"


def model_variant(config: dict) -> str:
    """Which model a run trained, from its config: "kgCVAE (Zhao et al.'s), zhao preset", "kgCVAE (legacy), ...",
    "CVAE, cpu preset". A kgCVAE config without ``kgcvae_style`` was written before the field existed, when the
    legacy kgCVAE was the only one."""
    model = config.get("model")
    if not isinstance(model, dict):
        return "unknown"
    if model.get("kgcvae"):
        style = model.get("kgcvae_style", "legacy")
        name = "kgCVAE (Zhao et al.'s)" if style == "zhao" else f"kgCVAE ({style})"
    else:
        name = "CVAE"
    return f"{name}, {model.get('preset', 'cpu')} preset"


def _run_name(config: dict, run_dir: Path, taken: set[str]) -> str:
    """The config's `name` (else the directory's), suffixed with the schedule kind when it doesn't name it,
    and made unique among `taken` with -2, -3, ..."""
    base = str(config.get("name") or run_dir.resolve().name)
    kind = _schedule_kind(config)
    if kind != "unknown" and kind not in base:
        base = f"{base}-{kind}"
    name, i = base, 2
    while name in taken:
        name, i = f"{base}-{i}", i + 1
    return name


def load_run(run_dir: Path) -> dict[str, Any]:
    """Everything the report needs from one run directory."""
    config = _read_json(run_dir / "config.json") or {}
    train, valid = read_metrics(run_dir / "metrics.jsonl")
    final_valid = {k: v for k, v in valid[-1].items() if k != "split"} if valid else {}
    scored = [r for r in valid if _is_number(r.get("elbo")) and math.isfinite(r["elbo"])]
    best_valid = {k: v for k, v in min(scored, key=lambda r: r["elbo"]).items() if k != "split"} if scored else {}
    train_cfg = config["train"] if isinstance(config.get("train"), dict) else {}
    return {
        "dir": str(run_dir),
        "config": config,
        "schedule": _schedule_kind(config),
        "model": model_variant(config),
        "train": train,
        "valid": valid,
        "final_valid": final_valid,
        "best_valid": best_valid,
        "last_train": train[-1] if train else {},
        "seed": train_cfg.get("seed"),
        "test": _read_json(run_dir / "eval" / "test.json"),
        # the bundle of the lowest validation ELBO (train.export_best), evaluated beside the exported one
        "test_best": _read_json(run_dir / "eval" / "test-best.json"),
    }


# ---------------------------------------------------------------------------------------------- format


def _is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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
    if not _is_number(mi) or not math.isfinite(mi):
        return fmt(mi)
    ceiling = test.get("mi_ceiling")
    if not _is_number(ceiling):
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
    present = {k for d in dicts for k, v in d.items() if _is_number(v) or v is None}
    return [k for k in order if k in present] + sorted(present - set(order))


def _table(header: list[str], rows: list[list[str]], numeric: bool = True) -> list[str]:
    """A markdown table; with `numeric` every column but the first is right-aligned."""
    esc = [[c.replace("|", "\\|") for c in row] for row in [header, *rows]]
    rule = ["---"] + ["---:" if numeric else "---"] * (len(header) - 1)
    lines = ["| " + " | ".join(esc[0]) + " |", "|" + "|".join(rule) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in esc[1:]]


def _schedule_text(config: dict) -> str:
    schedule = config.get("schedule")
    if not isinstance(schedule, dict):
        return _schedule_kind(config)
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in schedule.items() if k != "kind")
    return f"{_schedule_kind(config)} ({params})" if params else _schedule_kind(config)


# ----------------------------------------------------------------------------------------------- plots


def _moving_average(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred moving average of y over `window` points, with the x of each window's centre."""
    if window <= 1 or len(y) < window:
        return x, y
    smooth = np.convolve(y, np.ones(window) / window, mode="valid")
    start = (window - 1) // 2
    return x[start : start + len(smooth)], smooth


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if _is_number(r.get(key)) and math.isfinite(r[key])]
    if not pts:
        return np.array([]), np.array([])
    xs, ys = zip(*pts)
    return np.asarray(xs, dtype=float), np.asarray(ys, dtype=float)


def _plot_train(runs: dict[str, dict], key: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5))
    any_data = False
    for i, (name, run) in enumerate(runs.items()):
        x, y = _series(run["train"], key)
        if len(x) == 0:
            continue
        any_data = True
        color = f"C{i % 10}"
        if key == "beta":  # a pure function of the step: nothing to smooth
            ax.plot(x, y, color=color, label=name)
            continue
        ax.plot(x, y, color=color, alpha=0.2, linewidth=0.8)
        xs, ys = _moving_average(x, y, max(1, len(y) // 50))
        ax.plot(xs, ys, color=color, label=name)
    _finish(fig, ax, key, any_data, path)


def _plot_valid(runs: dict[str, dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(VALID_PLOT_KEYS), figsize=(10, 3.5))
    for ax, key in zip(axes, VALID_PLOT_KEYS):
        any_data = False
        for i, (name, run) in enumerate(runs.items()):
            x, y = _series(run["valid"], key)
            if len(x):
                any_data = True
                ax.plot(x, y, marker="o", markersize=3, color=f"C{i % 10}", label=name)
        _finish(None, ax, f"valid {key}", any_data, None)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _finish(fig, ax, ylabel: str, any_data: bool, path: Path | None) -> None:
    import matplotlib.pyplot as plt

    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if any_data:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no data", ha="center", va="center", transform=ax.transAxes)
    if fig is not None and path is not None:
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)


def write_plots(runs: dict[str, dict], out_dir: Path) -> dict[str, str]:
    """Write the PNGs into out_dir; returns {plot name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    files = {}
    for key in TRAIN_PLOTS:
        _plot_train(runs, key, out_dir / f"{key}.png")
        files[key] = f"{key}.png"
    _plot_valid(runs, out_dir / "valid.png")
    files["valid"] = "valid.png"
    return files


# ---------------------------------------------------------------------------------------------- report


def _markdown(title: str, runs: dict[str, dict], plots: dict[str, str], notes: str | None) -> str:
    names = list(runs)
    lines = [f"# {title}", "", "## Runs", ""]
    rows = []
    for name, run in runs.items():
        cfg = run["config"]
        data = cfg.get("data") if isinstance(cfg.get("data"), dict) else {}
        train = cfg.get("train") if isinstance(cfg.get("train"), dict) else {}
        rows.append([
            name, _schedule_text(cfg), model_variant(cfg), fmt(data.get("corpus")), fmt(train.get("steps")),
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

    groups = _groups(runs)
    if len(groups) < len(runs):  # several seeds of one config: mean and spread, then the paired comparison
        lines += _group_tables(groups)
    paired = _paired(runs, groups)
    if paired:
        lines += _paired_tables(paired)

    lines += ["", "## Plots", ""]
    captions = {
        "beta": "KL weight beta against the step",
        "kl": "KL term against the step (training; faint: raw, solid: moving average)",
        "rc_loss": "reconstruction loss against the step (training; faint: raw, solid: moving average)",
        "valid": "validation rc_ppl and KL against the step",
    }
    for key, file in plots.items():
        caption = captions.get(key) or (f"test metrics (exported bundle) against schedule.{key[8:]}; dashed: the runs of "
                                        "other schedule kinds" if key.startswith("against-") else key)
        lines += [f"![{caption}]({file})", ""]

    if notes:
        lines += ["## Notes", "", notes.rstrip("\n"), ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def compare(run_dirs: list[Path], out_dir: Path, title: str | None = None, notes: str | None = None,
            against: list[str] | None = None) -> dict:
    """Compare training runs: writes out_dir/report.md, report.json and beta/kl/rc_loss/valid PNGs, and for each
    schedule setting in `against` a plot of the test metrics against it (:func:`sweep`).

    Returns the report.json content: {"title", "notes", "plots", "runs": {name: {"schedule", "model", "dir", "config",
    "final_valid", "last_train", "test"}}}, with test None for a run without eval/test.json and NaN as None.
    """
    if not run_dirs:
        raise ValueError("compare needs at least one run directory")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = [(Path(d), load_run(Path(d))) for d in run_dirs]
    # Runs of one config with different seeds are told apart by their seed.
    names = [str(r["config"].get("name") or d.resolve().name) for d, r in loaded]
    seeds = [(r["config"].get("train") or {}).get("seed") for _, r in loaded]
    runs: dict[str, dict] = {}
    for (run_dir, run), base, seed in zip(loaded, names, seeds):
        config = run["config"]
        run["group"] = _run_name(config, run_dir, set())  # the config's name: its seeds form one group
        same = [s for n, s in zip(names, seeds) if n == base]
        if len(same) > 1 and None not in same and len(set(same)) == len(same):
            config = {**config, "name": f"{base}-s{seed}"}
        runs[_run_name(config, run_dir, set(runs))] = run
    title = title or "Run comparison: " + " vs ".join(runs)

    plots = write_plots(runs, out_dir)
    sweeps = {key: sweep(runs, key) for key in against or []}
    for key, points in sweeps.items():
        plots[f"against-{key}"] = _plot_sweep(points, key, out_dir / f"against-{key}.png")
    (out_dir / "report.md").write_text(_markdown(title, runs, plots, notes))
    report = {
        "title": title,
        "notes": notes,
        "plots": plots,
        "runs": {
            name: {k: run[k] for k in ("schedule", "seed", "group", "model", "dir", "config", "final_valid",
                                       "best_valid", "last_train", "test", "test_best")}
            for name, run in runs.items()
        },
    }
    if sweeps:
        report["sweeps"] = sweeps
    groups = _groups(runs)
    report["groups"] = groups
    report["paired"] = _paired(runs, groups)
    report = _json_safe(report)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    log.info("wrote %s", out_dir / "report.md")
    return report


SWEEP_METRICS = ("rc_ppl", "kl", "elbo", "active_units", "bleu4_recall", "distinct2_intra")


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
        raise ValueError(f"--against {key}: no schedule kind has runs with different schedule.{key}")
    kind = kinds[0]
    members = {n: r for n, r in runs.items() if r["schedule"] == kind}
    others = {n: tuple(sorted((k, repr(v)) for k, v in settings(r).items() if k != key)) for n, r in members.items()}
    common = max(dict.fromkeys(others.values()), key=list(others.values()).count)
    fixed = {k: settings(members[next(n for n in members if others[n] == common)])[k] for k, _ in common}
    points = sorted(({"run": n, "x": settings(r).get(key), "test": r["test"]} for n, r in members.items()
                     if others[n] == common), key=lambda p: p["x"])
    refs = [{"run": n, "schedule": _schedule_text(r["config"]), "test": r["test"]}
            for n, r in runs.items() if r["schedule"] != kind]
    return {"kind": kind, "fixed": {k: v for k, v in fixed.items() if k != "kind"}, "points": points,
            "references": refs}


def _plot_sweep(points: dict[str, Any], key: str, path: Path) -> str:
    import matplotlib.pyplot as plt

    metrics = [m for m in SWEEP_METRICS if any(_is_number((p["test"] or {}).get(m)) for p in points["points"])]
    if not metrics:
        raise ValueError(f"--against {key}: the runs have no test metrics (eval/test.json) to plot")
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        pts = [(p["x"], p["test"][metric]) for p in points["points"] if _is_number((p["test"] or {}).get(metric))]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color="C0", label=points["kind"])
        for i, ref in enumerate(points["references"]):
            value = (ref["test"] or {}).get(metric)
            if _is_number(value):
                ax.axhline(value, color=f"C{i + 1}", linestyle="--", linewidth=1, label=ref["run"])
        ax.set_xlabel(key)
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if key in ("cycles",):
            ax.set_xscale("log", base=2)
            ax.set_xticks([x for x, _ in pts], [str(x) for x, _ in pts])
    for ax in list(axes.flat)[len(metrics):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fixed = ", ".join(f"{k}={v}" for k, v in points["fixed"].items())
    fig.suptitle(f"{points['kind']} against {key} ({fixed})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path.name


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
            and all(_is_number(d.get(k)) and math.isfinite(d[k]) for d in dicts)]


def _groups(runs: dict[str, dict]) -> dict[str, dict]:
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


def _paired(runs: dict[str, dict], groups: dict[str, dict]) -> dict[str, Any] | None:
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


def _side(key: str, mean_diff: float, a: str, b: str) -> str:
    """Which of a, b the mean difference favours on a metric with a better direction, else ""."""
    if mean_diff == 0:
        return "even"
    if key in LOWER_BETTER:
        return a if mean_diff < 0 else b
    if key.startswith(HIGHER_BETTER_PREFIXES):
        return a if mean_diff > 0 else b
    return ""


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
                 f"{st['a_greater']} of {st['n']}", _side(k, st["mean_diff"], a, b)] for k, st in
                ((k, stats_[k]) for k in keys)]
        lines += _table(["metric", "difference: mean ± sd", "paired t", "p (two-sided)", f"{a} higher on",
                         "ahead (mean)"], body, numeric=False)
    lines += ["", f"The paired t-test has n - 1 = {len(paired['seeds']) - 1} degrees of freedom; with so few seeds "
              "only a consistent difference reaches a small p."]
    return lines
