"""Reading run directories: the metrics, config and test evaluations of each run, and the names they go by.

A run directory holds `metrics.jsonl` (training rows; validation rows carry "split": "valid"), `config.json`
(the resolved training config) and optionally `eval/test.json` and `eval/test-best.json` (the evaluator's
output for the exported bundle and for the lowest-validation-ELBO one).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, TypeGuard

log = logging.getLogger("training.report")


class ReportError(ValueError):
    """Run folders a report cannot be made of (the same run twice, no usable rows, an --out that is a file)."""


def distinct_runs(run_dirs: list[Path]) -> list[Path]:
    """The run folders as Paths; ReportError when one is given twice (under any spelling of its path)."""
    seen: dict[Path, Path] = {}
    for d in map(Path, run_dirs):
        key = d.resolve()
        if key in seen:
            also = f" (also as {seen[key]})" if seen[key] != d else ""
            raise ReportError(f"the run {d} is given twice{also}: each run once")
        seen[key] = d
    return list(seen.values())


def is_number(v: Any) -> TypeGuard[int | float]:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


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


def schedule_kind(config: dict) -> str:
    schedule = config.get("schedule")
    if isinstance(schedule, dict):
        return str(schedule.get("kind", "unknown"))
    return str(schedule) if schedule else "unknown"


def schedule_text(config: dict) -> str:
    """The schedule kind with its settings: "cyclical (cycles=4, ratio=0.5)"."""
    schedule = config.get("schedule")
    if not isinstance(schedule, dict):
        return schedule_kind(config)
    params = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in schedule.items() if k != "kind")
    return f"{schedule_kind(config)} ({params})" if params else schedule_kind(config)


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
    kind = schedule_kind(config)
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
    scored = [r for r in valid if is_number(r.get("elbo")) and math.isfinite(r["elbo"])]
    best_valid = {k: v for k, v in min(scored, key=lambda r: r["elbo"]).items() if k != "split"} if scored else {}
    train_cfg = config["train"] if isinstance(config.get("train"), dict) else {}
    return {
        "dir": str(run_dir),
        "config": config,
        "schedule": schedule_kind(config),
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


def load_runs(run_dirs: list[Path]) -> dict[str, dict]:
    """The runs by report name (:func:`_run_name`), in the order given; each run's "group" is its config's
    name, which its seeds share."""
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
    return runs
