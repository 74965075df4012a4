"""The `compare` report over training runs (`python -m training compare`): a markdown table, a JSON summary and
plots.

A run directory holds `metrics.jsonl` (training rows; validation rows carry "split": "valid"), `config.json`
(the resolved training config) and optionally `eval/test.json` (the evaluator's output). `compare` reads
several and writes `report.md`, `report.json` and the PNG plots beta / kl / rc_loss against the step for all
runs on shared axes (the layout of Fu et al. 2019, fig. 1) and validation rc_ppl / kl against the step.

By role: `runs` reads the run directories, `stats` groups the seeds of a config and runs the paired tests,
`plots` draws the PNGs, `render` writes report.md and the content of report.json. :func:`compare` calls them in
that order, computing the groups and the paired tests once for both files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .plots import plot_sweep, write_plots
from .render import fmt, markdown, mi_cell, report_json
from .runs import ReportError, distinct_runs, load_run, load_runs, model_variant, read_metrics
from .stats import group_runs, paired_groups, paired_test, sweep

__all__ = [
    "ReportError", "compare", "distinct_runs", "fmt", "group_runs", "load_run", "load_runs", "mi_cell", "model_variant", "paired_groups",
    "paired_test", "read_metrics", "sweep", "write_plots",
]  # fmt: skip

log = logging.getLogger("training.report")


def compare(run_dirs: list[Path], out_dir: Path, title: str | None = None, notes: str | None = None,
            against: list[str] | None = None) -> dict:
    """Compare training runs: writes out_dir/report.md, report.json and beta/kl/rc_loss/valid PNGs, and for each
    schedule setting in `against` a plot of the test metrics against it (:func:`sweep`).

    Returns the report.json content: {"title", "notes", "plots", "runs": {name: {"schedule", "model", "dir", "config",
    "final_valid", "last_train", "test"}}}, with test None for a run without eval/test.json and NaN as None.
    """
    if not run_dirs:
        raise ReportError("compare needs at least one run directory")
    runs = load_runs(distinct_runs(run_dirs))
    title = title or "Run comparison: " + " vs ".join(runs)
    sweeps = {key: sweep(runs, key) for key in against or []}  # ReportError before anything is written
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    plots = write_plots(runs, out_dir)
    for key, points in sweeps.items():
        plots[f"against-{key}"] = plot_sweep(points, key, out_dir / f"against-{key}.png")
    groups = group_runs(runs)
    paired = paired_groups(runs, groups)
    (out_dir / "report.md").write_text(markdown(title, runs, plots, notes, groups, paired))
    report = report_json(title, notes, plots, runs, sweeps, groups, paired)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, allow_nan=False) + "\n")
    log.info("wrote %s", out_dir / "report.md")
    return report
