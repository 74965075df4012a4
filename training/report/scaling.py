"""The scaling probe's report (`python -m training scaling`): validation ELBO against training CPU time for runs
of several model sizes, each curve fitted and extrapolated to a longer budget.

Each run's validation rows carry ``cpu_s``, the CPU seconds its process spent in the loop (all threads, over
every resume; training.loop), so runs paused, resumed or sharing the machine compare on the work they got. The
fit uses the validation points at beta = 1 (the cyclical schedule's ramps raise the KL and with it the ELBO):

    ELBO(t) = a + b * t^(-c)        t in CPU hours, a >= 0, b >= 0, 0 < c <= 3

and the report gives each size's fitted ELBO at the budget asked for, with the size that is lowest there. The
fit extrapolates a 45-minute curve tens of times further, along a schedule that was not the long run's: it
ranks the sizes, it does not predict the long run's ELBO to the nat.
"""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from .runs import ReportError, _read_json, distinct_runs, is_number, read_metrics

log = logging.getLogger("training.report")
MIN_FIT_POINTS = 4  # three parameters, and one point to tell a fit from an interpolation


def parameters(run_dir: Path) -> int | None:
    """The model's parameter count, from the shapes in the run's checkpoint (no tensor is read); None when
    there is no readable checkpoint."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / "checkpoint.safetensors"
    if not path.exists():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.startswith("model."))
    except (SafetensorError, OSError) as e:
        log.warning("%s: cannot read the parameter count: %s", path, e)
        return None


def _numbers(row: dict[str, Any], *keys: str) -> bool:
    return all(is_number(row.get(k)) and math.isfinite(row[k]) for k in keys)


def curve(run_dir: Path) -> dict[str, Any]:
    """A run's validation points (rows with the CPU time, beta and a finite ELBO; others are skipped with a
    warning) and its size and length. ReportError when no row is a point."""
    path = run_dir / "metrics.jsonl"
    train, valid = read_metrics(path)
    rows = [r for r in valid if _numbers(r, "cpu_s", "beta", "elbo")]
    if not rows:
        raise ReportError(f"{path}: no validation row with cpu_s, beta and elbo "
                          f"({len(train)} training and {len(valid)} validation rows): nothing to plot or fit")
    if len(rows) < len(valid):
        log.warning("%s: %d of %d validation rows lack a number for cpu_s, beta or elbo; skipped", path,
                    len(valid) - len(rows), len(valid))
    train = [r for r in train if _numbers(r, "cpu_s", "wall_s")]
    cfg = _read_json(run_dir / "config.json") or {}
    model, train_cfg = cfg.get("model"), cfg.get("train")
    return {"name": run_dir.name, "dir": str(run_dir), "model": model if isinstance(model, dict) else {},
            "steps": train_cfg.get("steps") if isinstance(train_cfg, dict) else None,
            "parameters": parameters(run_dir),
            "points": [{"step": r["step"], "cpu_h": r["cpu_s"] / 3600, "beta": r["beta"], "elbo": r["elbo"],
                        "kl": r.get("kl"), "rc_ppl": r.get("rc_ppl")} for r in rows],
            "last_step": train[-1]["step"] if train else rows[-1]["step"],
            "cpu_h": (train[-1] if train else rows[-1])["cpu_s"] / 3600,
            "wall_h": train[-1]["wall_s"] / 3600 if train else None}


def law(t: np.ndarray, a: float, b: float, c: float) -> np.ndarray:
    return a + b * np.power(t, -c)


def fit(points: list[dict[str, Any]]) -> dict[str, float] | None:
    """(a, b, c) of :func:`law` over the beta = 1 points, None with fewer than MIN_FIT_POINTS of them."""
    from scipy.optimize import curve_fit

    pts = [p for p in points if p["beta"] >= 0.999 and p["cpu_h"] > 0]
    if len(pts) < MIN_FIT_POINTS:
        return None
    t = np.array([p["cpu_h"] for p in pts])
    y = np.array([p["elbo"] for p in pts])
    try:
        (a, b, c), _ = curve_fit(law, t, y, p0=(y.min() * 0.9, max(y.max() - y.min(), 1.0), 0.5),
                                 bounds=([0.0, 0.0, 1e-3], [np.inf, np.inf, 3.0]), maxfev=20000)
    except (RuntimeError, ValueError) as e:
        log.warning("no fit: %s", e)
        return None
    rmse = float(np.sqrt(np.mean((law(t, a, b, c) - y) ** 2)))
    return {"a": float(a), "b": float(b), "c": float(c), "rmse": rmse, "points": len(pts)}


def scaling(run_dirs: list[Path], out_dir: Path, budget_cpu_h: float,
            seconds_per_step: dict[str, float] | None = None) -> dict[str, Any]:
    """Writes out_dir/report.md, report.json and elbo-vs-cpu.png; returns the report.json content.

    ``seconds_per_step`` (run name -> CPU seconds per training step, measured alone on a quiet machine): count
    those runs' time as step x that instead of the CPU time they were charged, for runs that shared the cores
    with other work (cache and memory contention make a step cost more CPU time, unevenly between runs)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ReportError(f"{out_dir} is a file; --out takes a folder")
    missing = [str(d) for d in run_dirs if not (Path(d) / "metrics.jsonl").is_file()]
    if missing or not run_dirs:
        raise ReportError(f"no metrics.jsonl in {', '.join(missing) or '(no run folder given)'}")
    runs = [curve(d) for d in distinct_runs(run_dirs)]
    names = [r["name"] for r in runs]
    for r in runs:  # runs in folders of the same name (a/tiny, b/tiny) go by their paths
        r["name"] = r["name"] if names.count(r["name"]) == 1 else r["dir"]
    unknown = sorted(set(seconds_per_step or {}) - {r["name"] for r in runs})
    if unknown:
        raise ReportError(f"--seconds-per-step names no run given: {', '.join(unknown)}")
    for r in runs:
        sps = (seconds_per_step or {}).get(r["name"])
        r["seconds_per_step"] = sps
        if sps is not None:  # time as the run's steps cost alone (evaluation excluded)
            for pt in r["points"]:
                pt["cpu_h_charged"], pt["cpu_h"] = pt["cpu_h"], pt["step"] * sps / 3600
            r["cpu_h_charged"], r["cpu_h"] = r["cpu_h"], r["last_step"] * sps / 3600
    for r in runs:
        r["fit"] = fit(r["points"])
        r["at_budget"] = (float(law(np.array([budget_cpu_h]), r["fit"]["a"], r["fit"]["b"], r["fit"]["c"])[0])
                          if r["fit"] else None)
        r["best_elbo"] = min((p["elbo"] for p in r["points"]), default=None)
    fitted = [r for r in runs if r["at_budget"] is not None]
    winner = min(fitted, key=lambda r: r["at_budget"])["name"] if fitted else None
    out_dir.mkdir(parents=True, exist_ok=True)
    _plot(runs, budget_cpu_h, out_dir / "elbo-vs-cpu.png")
    report = {"budget_cpu_h": budget_cpu_h, "winner": winner, "runs": runs, "law": "elbo = a + b * cpu_h^-c",
              "time": ("steps x seconds per step measured alone" if seconds_per_step
                       else "CPU time charged to the training process")}
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "report.md").write_text(_markdown(report))
    log.info("wrote %s (lowest fitted ELBO at %g CPU hours: %s)", out_dir / "report.md", budget_cpu_h,
             winner or "none fitted")
    return report


def _plot(runs: list[dict[str, Any]], budget: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(11, 4))
    for r in runs:
        t = [p["cpu_h"] for p in r["points"]]
        y = [p["elbo"] for p in r["points"]]
        size = "" if r["parameters"] is None else f" ({r['parameters'] / 1e6:.1f} M)"
        line, = ax.plot(t, y, "o-", ms=3, label=f"{r['name']}{size}")
        bx.plot(t, y, "o", ms=3, color=line.get_color())
        if r["fit"]:
            grid = np.geomspace(min(t), budget, 200)
            bx.plot(grid, law(grid, r["fit"]["a"], r["fit"]["b"], r["fit"]["c"]), "-", color=line.get_color(),
                    label=f"{r['name']}: {r['at_budget']:.1f} at {budget:g} h")
    for a in (ax, bx):
        a.set_xlabel("training CPU hours")
        a.set_ylabel("validation ELBO, nats per reply")
        a.grid(alpha=0.3)
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    ax.set_title("the probe")
    bx.set_xscale("log")
    bx.axvline(budget, color="grey", lw=0.8, ls="--")
    bx.set_title("fits on the beta = 1 points, extrapolated")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _num(v: float | None, scale: float = 1.0, spec: str = ".2f", unit: str = "") -> str:
    """A table cell: ``v * scale`` formatted, or "-" when unknown."""
    return "-" if v is None else format(v * scale, spec) + unit


def _markdown(report: dict[str, Any]) -> str:
    b = report["budget_cpu_h"]
    lines = ["# Scaling probe: validation ELBO against training CPU time", "",
             f"Fit: `{report['law']}` on each run's validation points at beta = 1; ELBO in nats per validation "
             f"reply; extrapolated to {b:g} CPU hours. Time: {report.get('time', 'CPU time charged')}.", "",
             "![ELBO against CPU time](elbo-vs-cpu.png)", "",
             "| run | parameters | steps | CPU h | wall h | best valid ELBO | last valid ELBO | a | b | c | fit rmse | "
             f"ELBO at {b:g} CPU h |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in report["runs"]:
        f = r["fit"] or {}
        last = r["points"][-1]["elbo"] if r["points"] else None

        def cell(k: str, f: dict = f) -> str:
            return f"{f[k]:.3g}" if k in f else "-"

        lines.append(f"| {r['name']} | {_num(r['parameters'], 1e-6, '.2f', ' M')} | {r['last_step']} | "
                     f"{_num(r['cpu_h'])} | {_num(r['wall_h'])} | {_num(r['best_elbo'])} | {_num(last)} | {cell('a')} | "
                     f"{cell('b')} | {cell('c')} | {cell('rmse')} | {_num(r['at_budget'])} |")
    if report["winner"] is None:
        lines += ["", f"No run could be fitted (a fit needs {MIN_FIT_POINTS} validation points at beta = 1 or more): "
                      f"no size can be said to be lowest at {b:g} CPU hours.", ""]
    else:
        lines += ["", f"Lowest fitted ELBO at {b:g} CPU hours: **{report['winner']}**.", ""]
    return "\n".join(lines)
