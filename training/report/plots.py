"""The report's PNGs: beta / kl / rc_loss against the step for all runs on shared axes (the layout of Fu et al.
2019, fig. 1), validation rc_ppl / kl against the step, and the test metrics against one schedule setting."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from .runs import is_number

TRAIN_PLOTS = ("beta", "kl", "rc_loss")
VALID_PLOT_KEYS = ("rc_ppl", "kl")
SWEEP_METRICS = ("rc_ppl", "kl", "elbo", "active_units", "bleu4_recall", "distinct2_intra")


def _moving_average(x: np.ndarray, y: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred moving average of y over `window` points, with the x of each window's centre."""
    if window <= 1 or len(y) < window:
        return x, y
    smooth = np.convolve(y, np.ones(window) / window, mode="valid")
    start = (window - 1) // 2
    return x[start : start + len(smooth)], smooth


def _series(rows: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if is_number(r.get(key)) and math.isfinite(r[key])]
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


def plot_sweep(points: dict[str, Any], key: str, path: Path) -> str:
    """The test metrics of a :func:`~training.report.stats.sweep` against `key`, the references as dashed lines;
    returns the file's name."""
    import matplotlib.pyplot as plt

    metrics = [m for m in SWEEP_METRICS if any(is_number((p["test"] or {}).get(m)) for p in points["points"])]
    if not metrics:
        raise ValueError(f"--against {key}: the runs have no test metrics (eval/test.json) to plot")
    cols = min(3, len(metrics))
    rows = -(-len(metrics) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3 * rows), squeeze=False)
    for ax, metric in zip(axes.flat, metrics):
        pts = [(p["x"], p["test"][metric]) for p in points["points"] if is_number((p["test"] or {}).get(metric))]
        ax.plot([x for x, _ in pts], [y for _, y in pts], marker="o", color="C0", label=points["kind"])
        for i, ref in enumerate(points["references"]):
            value = (ref["test"] or {}).get(metric)
            if is_number(value):
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
