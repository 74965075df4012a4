"""The scaling probe's report: curves read from run folders, the fit recovers a known law, the winner at the
budget is the run the law says."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from training.report import ReportError
from training.report.scaling import law, scaling


def write_run(folder, a: float, b: float, c: float, cpu_per_step: float, steps: int = 1600) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model": {"preset": "tiny"}, "train": {"steps": steps}}))
    rows = []
    for i in range(1, 17):
        step = steps * i // 16
        cpu = step * cpu_per_step
        beta = 0.5 if i % 4 == 1 else 1.0  # the first point of each cycle is on the ramp
        elbo = float(law(cpu / 3600, a, b, c)) + (5.0 if beta < 1 else 0.0)  # off the law: must not be fitted
        rows.append({"step": step, "cpu_s": cpu, "wall_s": cpu, "beta": beta})
        rows.append({"step": step, "split": "valid", "cpu_s": cpu, "wall_s": cpu, "beta": beta, "elbo": elbo,
                     "kl": 1.0, "rc_ppl": 50.0})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_fit_recovers_the_law_and_picks_the_size_that_wins_at_the_budget(tmp_path):
    # small: better early, flatter; large: worse early, lower asymptote -> wins at a long budget
    write_run(tmp_path / "small", a=80.0, b=6.0, c=0.5, cpu_per_step=1.0)
    write_run(tmp_path / "large", a=70.0, b=14.0, c=0.5, cpu_per_step=1.0)
    rep = scaling([tmp_path / "small", tmp_path / "large"], tmp_path / "out", budget_cpu_h=24.0)
    fits = {r["name"]: r["fit"] for r in rep["runs"]}
    assert fits["small"]["a"] == pytest.approx(80.0, abs=0.5) and fits["large"]["c"] == pytest.approx(0.5, abs=0.05)
    assert fits["small"]["points"] == 12  # the ramp points are left out
    assert rep["winner"] == "large"
    assert rep["runs"][0]["at_budget"] == pytest.approx(80.0 + 6.0 * 24 ** -0.5, abs=0.3)
    assert (tmp_path / "out" / "elbo-vs-cpu.png").stat().st_size > 0
    assert "**large**" in (tmp_path / "out" / "report.md").read_text()


def test_cli_refuses_a_folder_without_metrics(tmp_path):
    r = subprocess.run([sys.executable, "-m", "training", "scaling", str(tmp_path), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no metrics.jsonl" in r.stderr and "Traceback" not in r.stderr


def test_the_library_refuses_runs_it_cannot_report(tmp_path):
    """Before writing anything: a run without a validation point, the same run twice, an --out that is a file."""
    write_run(tmp_path / "run", a=80.0, b=6.0, c=0.5, cpu_per_step=1.0)
    (tmp_path / "train-only").mkdir()
    (tmp_path / "train-only" / "metrics.jsonl").write_text(json.dumps({"step": 1, "cpu_s": 1.0, "beta": 0.1}) + "\n")
    with pytest.raises(ReportError, match="no validation row with cpu_s, beta and elbo"):
        scaling([tmp_path / "run", tmp_path / "train-only"], tmp_path / "out", budget_cpu_h=24.0)
    (tmp_path / "link").symlink_to(tmp_path / "run")
    with pytest.raises(ReportError, match="is given twice"):
        scaling([tmp_path / "run", tmp_path / "link"], tmp_path / "out", budget_cpu_h=24.0)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(ReportError, match="is a file"):
        scaling([tmp_path / "run"], tmp_path / "file", budget_cpu_h=24.0)
    assert not (tmp_path / "out").exists() and (tmp_path / "file").read_text() == "keep"


def cli(capsys, *args) -> tuple[int, str]:
    from training.__main__ import main

    try:
        rc = main(["scaling", *map(str, args)])
    except SystemExit as e:
        rc = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return rc, err.strip().splitlines()[-1] if err.strip() else ""


def test_a_run_with_no_validation_point_is_refused(tmp_path, capsys):
    """An empty metrics.jsonl, one of training rows only and one whose validation rows have no ELBO."""
    folders = {"empty": [], "train-only": [{"step": 1, "cpu_s": 1.0, "wall_s": 1.0, "beta": 0.1}],
               "no-elbo": [{"step": 1, "split": "valid", "cpu_s": 1.0, "wall_s": 1.0, "beta": 1.0, "kl": 1.0}]}
    for name, rows in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        rc, line = cli(capsys, tmp_path / name, "--out", tmp_path / "out")
        assert rc == 2 and line.startswith(f"error: {tmp_path / name / 'metrics.jsonl'}: no validation row"), line
    assert not (tmp_path / "out").exists()


def test_validation_rows_without_an_elbo_are_skipped(tmp_path):
    write_run(tmp_path / "run", a=80.0, b=6.0, c=0.5, cpu_per_step=1.0)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 1700, "split": "valid", "cpu_s": 1700.0, "beta": 1.0, "kl": 1.0}) + "\n")
    rep = scaling([tmp_path / "run"], tmp_path / "out", budget_cpu_h=24.0)
    assert len(rep["runs"][0]["points"]) == 16 and rep["runs"][0]["fit"]["points"] == 12


def test_unknown_size_and_no_fit_are_said_so(tmp_path):
    """Without a checkpoint the size is unknown ("-", not 0.00 M); with too few points at beta = 1 nothing is
    fitted, and the report says no size can be picked instead of naming **None**."""
    write_run(tmp_path / "short", a=80.0, b=6.0, c=0.5, cpu_per_step=1.0)
    rows = [json.loads(line) for line in (tmp_path / "short" / "metrics.jsonl").read_text().splitlines()]
    (tmp_path / "short" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    rep = scaling([tmp_path / "short"], tmp_path / "out", budget_cpu_h=24.0)
    assert rep["winner"] is None and rep["runs"][0]["parameters"] is None
    md = (tmp_path / "out" / "report.md").read_text()
    assert "0.00 M" not in md and "| short | - | 400 |" in md
    assert "None" not in md and "No run could be fitted" in md and "no size can be said to be lowest" in md


def test_the_cli_refuses_a_run_twice_an_out_file_and_a_budget_out_of_range(tmp_path, capsys):
    write_run(tmp_path / "run", a=80.0, b=6.0, c=0.5, cpu_per_step=1.0)
    rc, line = cli(capsys, tmp_path / "run", f"{tmp_path}/./run/", "--out", tmp_path / "out")
    assert rc == 2 and "is given twice" in line
    (tmp_path / "file").write_text("keep")
    rc, line = cli(capsys, tmp_path / "run", "--out", tmp_path / "file")
    assert rc == 2 and "is a file; expected a folder" in line and (tmp_path / "file").read_text() == "keep"
    for budget in ("0", "-1", "nan", "inf", "1e300"):
        rc, line = cli(capsys, tmp_path / "run", "--out", tmp_path / "out", "--budget-cpu-hours", budget)
        assert rc == 2 and "--budget-cpu-hours" in line
    assert not (tmp_path / "out").exists()


def test_seconds_per_step_times_a_run_by_its_steps(tmp_path):
    """A run that shared the cores is charged more CPU time per step; --seconds-per-step counts its steps at
    their cost alone."""
    write_run(tmp_path / "small", a=80.0, b=6.0, c=0.5, cpu_per_step=2.0)  # charged twice the cost
    rep = scaling([tmp_path / "small"], tmp_path / "out", budget_cpu_h=24.0, seconds_per_step={"small": 1.0})
    run = rep["runs"][0]
    assert run["cpu_h"] == pytest.approx(1600 / 3600) and run["cpu_h_charged"] == pytest.approx(3200 / 3600)
    assert run["fit"]["a"] == pytest.approx(80.0, abs=1.0)
    assert run["fit"]["b"] == pytest.approx(6.0 * 2 ** -0.5, rel=0.02)  # the same curve over half the time
    r = subprocess.run([sys.executable, "-m", "training", "scaling", str(tmp_path / "small"), "--out",
                        str(tmp_path / "o2"), "--seconds-per-step", "nosuch=1"], capture_output=True, text=True)
    assert r.returncode == 2 and "names no run" in r.stderr
