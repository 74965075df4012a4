import json
import math

import pytest

from training.__main__ import main
from training.report import compare

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
STEPS = 200


def cyclical_beta(step, total=STEPS, cycles=4, ratio=0.5):
    period = total / cycles
    return min(1.0, (step % period) / (period * ratio))


def monotonic_beta(step, total=STEPS, ratio=0.5):
    return min(1.0, step / (total * ratio))


def make_run(root, dirname, name, kind, beta, test=None):
    run = root / dirname
    run.mkdir()
    rows = []
    for step in range(0, STEPS, 2):
        b = beta(step)
        rows.append({"step": step, "beta": b, "lr": 1e-3, "rc_loss": 40.0 - step / 10, "kl": 5.0 * (1 - b) + 1,
                     "bow_loss": 30.0, "tokens_per_s": 1000.0})  # fmt: skip
        if step % 50 == 48:
            rows.append({"split": "valid", "step": step, "rc_loss": 38.0 - step / 20, "rc_ppl": 30.0 - step / 20,
                         "kl": 2.0 + step / 100, "elbo": 40.0, "bow_loss": 31.0})  # fmt: skip
    lines = [json.dumps(r) for r in rows]
    lines.insert(5, '{"step": 9, "beta": 0.1, "rc_lo')  # a line cut off by a killed run
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    config = {
        "name": name,
        "schedule": {"kind": kind, "cycles": 4, "ratio": 0.5},
        "model": {"latent_dim": 16, "vocab_size": 64},
        "data": {"corpus": "swda", "dir": "../shared/data/swda"},
        "train": {"steps": STEPS, "seed": 7},
    }
    (run / "config.json").write_text(json.dumps(config))
    if test is not None:
        (run / "eval").mkdir()
        (run / "eval" / "test.json").write_text(json.dumps(test))
    return run


TEST_METRICS = {
    "split": "test", "n_contexts": 12, "bundle_sha256": "ab" * 32,
    "rc_ppl": 27.5, "rc_nll": math.log(27.5), "kl": 3.25, "elbo": 45.5, "bow_loss": 29.0,
    "active_units": 9, "latent_dim": 16, "mi": float("nan"),
    "bleu1_precision": 0.41, "bleu4_precision": 0.123, "bleu1_recall": 0.52, "bleu4_recall": 0.2,
    "distinct1_intra": 0.8, "distinct2_intra": 0.9, "distinct1_inter": 0.1, "distinct2_inter": 0.3, "mean_len": 9.5,
}  # fmt: skip


@pytest.fixture
def runs(tmp_path):
    cyc = make_run(tmp_path, "run_a", "swda-cyclical", "cyclical", cyclical_beta, test=TEST_METRICS)
    mono = make_run(tmp_path, "run_b", "swda-monotonic", "monotonic", monotonic_beta)
    return cyc, mono


def test_compare_writes_report_files_and_plots(runs, tmp_path):
    out = tmp_path / "report"
    notes = "Commands:\n\n    python -m training compare run_a run_b --out report\n\nCaveat: *tiny* runs."
    report = compare(list(runs), out, title="Cyclical vs monotonic", notes=notes)

    for png in ("beta.png", "kl.png", "rc_loss.png", "valid.png"):
        data = (out / png).read_bytes()
        assert data[:8] == PNG_MAGIC, png
        assert len(data) > 1000, png

    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == report
    cyc = on_disk["runs"]["swda-cyclical"]
    mono = on_disk["runs"]["swda-monotonic"]
    assert cyc["schedule"] == "cyclical" and mono["schedule"] == "monotonic"
    assert cyc["config"]["schedule"]["kind"] == "cyclical"
    assert cyc["test"]["bleu4_precision"] == pytest.approx(0.123)
    assert cyc["test"]["active_units"] == 9
    assert cyc["test"]["mi"] is None  # NaN -> null: report.json is strict JSON
    assert mono["test"] is None
    assert cyc["final_valid"]["step"] == 198 and mono["final_valid"]["step"] == 198
    assert cyc["final_valid"]["rc_ppl"] == pytest.approx(30.0 - 198 / 20)
    assert "split" not in cyc["final_valid"]
    assert cyc["last_train"]["step"] == 198
    assert cyc["last_train"]["beta"] == pytest.approx(cyclical_beta(198))

    md = (out / "report.md").read_text()
    assert md.startswith("# Cyclical vs monotonic\n")
    assert "swda-cyclical" in md and "swda-monotonic" in md
    assert "not evaluated" in md
    assert "| bleu4_precision | 0.1230 | – |" in md
    assert "| mi | nan | – |" in md
    assert "| rc_ppl | 20.1000 | 20.1000 |" in md  # final validation table
    for png in ("beta.png", "kl.png", "rc_loss.png", "valid.png"):
        assert f"]({png})" in md
    assert notes in md  # verbatim


def test_run_names_fall_back_to_dir_and_get_schedule_and_unique(tmp_path):
    a = make_run(tmp_path, "a", "", "cyclical", cyclical_beta)
    b = make_run(tmp_path, "b", "swda", "cyclical", cyclical_beta)
    c = make_run(tmp_path, "c", "swda", "cyclical", cyclical_beta)
    report = compare([a, b, c], tmp_path / "out")
    assert list(report["runs"]) == ["a-cyclical", "swda-cyclical", "swda-cyclical-2"]
    assert report["title"] == "Run comparison: a-cyclical vs swda-cyclical vs swda-cyclical-2"


def test_runs_of_one_config_with_different_seeds_are_named_by_seed(tmp_path):
    runs = []
    for seed in (1, 2):
        run = make_run(tmp_path, f"r{seed}", "swda", "cyclical", cyclical_beta)
        cfg = json.loads((run / "config.json").read_text())
        cfg["train"]["seed"] = seed
        (run / "config.json").write_text(json.dumps(cfg))
        runs.append(run)
    report = compare(runs, tmp_path / "out")
    assert list(report["runs"]) == ["swda-s1-cyclical", "swda-s2-cyclical"]
    assert report["groups"]["swda-cyclical"]["runs"] == ["swda-s1-cyclical", "swda-s2-cyclical"]
    assert report["groups"]["swda-cyclical"]["seeds"] == [1, 2]
    assert [r["seed"] for r in report["runs"].values()] == [1, 2]


def _seeded(root, name, kind, seed, test, best=None):
    run = make_run(root, f"{name}-{seed}", name, kind, cyclical_beta, test=test)
    cfg = json.loads((run / "config.json").read_text())
    cfg["train"]["seed"] = seed
    (run / "config.json").write_text(json.dumps(cfg))
    if best is not None:
        (run / "eval" / "test-best.json").write_text(json.dumps(best))
    return run


def test_seeds_give_mean_and_spread_and_a_paired_test_by_seed(tmp_path):
    """Three seeds of two configs: per config mean and sample standard deviation; per metric the paired t-test
    of the differences by seed (values worked by hand), on the last-step and on the best-ELBO evaluation."""
    ppl_a, ppl_b = (30.0, 32.0, 31.0), (33.0, 34.0, 36.0)  # differences -3, -2, -5
    runs = [_seeded(tmp_path, "swda-cyclical", "cyclical", s, {**TEST_METRICS, "rc_ppl": a},
                    best={**TEST_METRICS, "rc_ppl": a + 1}) for s, a in zip((1, 2, 3), ppl_a)]
    runs += [_seeded(tmp_path, "swda-monotonic", "monotonic", s, {**TEST_METRICS, "rc_ppl": b},
                     best={**TEST_METRICS, "rc_ppl": b}) for s, b in ((3, ppl_b[2]), (1, ppl_b[0]), (2, ppl_b[1]))]
    report = compare(runs, tmp_path / "out")
    g = report["groups"]
    assert list(g) == ["swda-cyclical", "swda-monotonic"]
    assert g["swda-cyclical"]["test_mean"]["rc_ppl"] == pytest.approx(31.0)
    assert g["swda-cyclical"]["test_std"]["rc_ppl"] == pytest.approx(1.0)  # sample sd of 30, 32, 31
    assert g["swda-monotonic"]["test_mean"]["rc_ppl"] == pytest.approx(103 / 3)
    assert g["swda-cyclical"]["test_best_mean"]["rc_ppl"] == pytest.approx(32.0)
    st = report["paired"]["test"]["rc_ppl"]
    # paired by seed: seed 1 30 - 33, seed 2 32 - 34, seed 3 31 - 36 -> -3, -2, -5
    mean, sd = -10 / 3, math.sqrt(((1 / 3) ** 2 + (4 / 3) ** 2 + (5 / 3) ** 2) / 2)
    assert st["mean_diff"] == pytest.approx(mean)
    assert st["std_diff"] == pytest.approx(sd)
    assert st["t"] == pytest.approx(mean / (sd / math.sqrt(3)))
    t = abs(st["t"])
    assert st["p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # Student's t with 2 degrees of freedom
    assert st["a_greater"] == 0 and st["n"] == 3
    assert report["paired"]["seeds"] == [1, 2, 3]
    assert report["paired"]["test"]["kl"]["t"] is None  # every difference 0: no t statistic
    assert "test_best" in report["paired"]
    md = (tmp_path / "out" / "report.md").read_text()
    assert "## Mean ± standard deviation over seeds: test, the exported bundle" in md
    assert "| rc_ppl | 31.0000 ± 1.0000 |" in md
    row = next(line for line in md.splitlines() if line.startswith("| rc_ppl | -3.3333"))
    assert row.rstrip().endswith("| 0 of 3 | swda-cyclical |")


def test_compare_survives_empty_run_dir(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    report = compare([empty], tmp_path / "out")
    assert report["runs"]["empty"]["test"] is None
    assert report["runs"]["empty"]["final_valid"] == {}
    md = (tmp_path / "out" / "report.md").read_text()
    assert "not evaluated" in md
    assert (tmp_path / "out" / "kl.png").read_bytes()[:8] == PNG_MAGIC


def test_compare_cli(runs, tmp_path, capsys):
    """`python -m training compare`, the one entry point of the report."""
    notes_file = tmp_path / "notes.md"
    notes_file.write_text("seed 7 only\n")
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cli"), "--notes-file", str(notes_file)]) == 0
    assert "seed 7 only" in (tmp_path / "cli" / "report.md").read_text()
    assert main(["compare", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == f"error: compare: not a run folder: {tmp_path / 'missing'}"
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):  # one kind of notes at a time
        main(["compare", str(runs[0]), "--out", str(tmp_path / "y"), "--notes", "a", "--notes-file", str(notes_file)])


def test_mutual_information_is_shown_beside_its_ceiling(tmp_path):
    whole = {**TEST_METRICS, "mi": 7.63, "mi_ceiling": 8.79, "mi_saturated": False}
    saturated = {**TEST_METRICS, "mi": 8.70, "mi_ceiling": 8.79, "mi_saturated": True}
    old = {**TEST_METRICS, "mi": 4.2024}  # an evaluation from before the ceiling was recorded
    runs = [make_run(tmp_path, f"r{i}", f"run{i}", "cyclical", cyclical_beta, test=t)
            for i, t in enumerate((whole, saturated, old))]
    compare(runs, tmp_path / "out")
    md = (tmp_path / "out" / "report.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| mi |"))
    cells = [c.strip() for c in row.strip("|").split("|")][1:]
    assert cells == ["7.6300 (ceiling 8.7900)", "8.7000 (ceiling 8.7900, saturated)",
                     "4.2024 (per-batch estimate: at most about log of the batch size, 4.16 for 64)"]
    assert "| mi_ceiling |" not in md.split("## Mean ± standard deviation")[0]  # beside the value, not a row of its own


def test_runs_table_names_the_model_variant(tmp_path):
    run = make_run(tmp_path, "kg", "swda", "cyclical", cyclical_beta)
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"] = {"preset": "zhao", "kgcvae": True}  # written before kgcvae_style existed
    (run / "config.json").write_text(json.dumps(cfg))
    report = compare([run], tmp_path / "out")
    assert report["runs"]["swda-cyclical"]["model"] == "kgCVAE (legacy), zhao preset"
    assert "| kgCVAE (legacy), zhao preset |" in (tmp_path / "out" / "report.md").read_text()


def test_against_plots_a_one_at_a_time_ablation(tmp_path):
    """--against cycles takes the cyclical runs at the most common other settings (R = 0.5), not the R sweep's
    runs; --against ratio the runs at M = 4; the monotonic run is a reference line in both."""
    grid = [(1, 0.5), (2, 0.5), (4, 0.5), (8, 0.5), (4, 0.25), (4, 1.0)]
    runs = []
    for m, r in grid:
        run = make_run(tmp_path, f"m{m}-r{r}", f"m{m}-r{r}", "cyclical", cyclical_beta,
                       test={**TEST_METRICS, "rc_ppl": 30.0 + m + r})
        cfg = json.loads((run / "config.json").read_text())
        cfg["schedule"].update(cycles=m, ratio=r)
        (run / "config.json").write_text(json.dumps(cfg))
        runs.append(run)
    runs.append(make_run(tmp_path, "mono", "mono", "monotonic", monotonic_beta, test=TEST_METRICS))
    report = compare(runs, tmp_path / "out", against=["cycles", "ratio"])
    by_m = report["sweeps"]["cycles"]
    assert [p["x"] for p in by_m["points"]] == [1, 2, 4, 8]
    assert [p["test"]["rc_ppl"] for p in by_m["points"]] == [31.5, 32.5, 34.5, 38.5]
    assert by_m["fixed"]["ratio"] == 0.5 and [r["run"] for r in by_m["references"]] == ["mono-monotonic"]
    by_r = report["sweeps"]["ratio"]
    assert [(p["x"], p["run"]) for p in by_r["points"]] == [(0.25, "m4-r0.25-cyclical"), (0.5, "m4-r0.5-cyclical"),
                                                              (1.0, "m4-r1.0-cyclical")]
    for key in ("cycles", "ratio"):
        assert (tmp_path / "out" / f"against-{key}.png").read_bytes()[:8] == PNG_MAGIC
        assert f"](against-{key}.png)" in (tmp_path / "out" / "report.md").read_text()
    with pytest.raises(ValueError, match="no schedule kind has runs with different schedule.shape"):
        compare(runs, tmp_path / "out2", against=["shape"])


def test_compare_refuses_a_run_twice_and_a_sweep_of_nothing_before_writing(runs, tmp_path):
    from training.report import ReportError

    with pytest.raises(ReportError, match="is given twice"):
        compare([runs[0], runs[0].parent / "." / runs[0].name], tmp_path / "out")
    with pytest.raises(ReportError, match="no schedule kind has runs with different schedule.cycles"):
        compare(list(runs), tmp_path / "out", against=["cycles"])
    assert not (tmp_path / "out").exists()


def one_line_refusal(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_compare_cli_refuses_folders_without_metrics(runs, tmp_path, capsys):
    """A folder with no metrics.jsonl, or an empty one, is no run: refused before any report is written."""
    empty, bare = tmp_path / "empty", tmp_path / "bare"
    empty.mkdir()
    (empty / "metrics.jsonl").write_text("")
    bare.mkdir()
    for folder in (empty, bare):
        assert main(["compare", str(runs[0]), str(folder), "--out", str(tmp_path / "x")]) == 2
        line = one_line_refusal(capsys)
        assert line.startswith("error: compare: no metrics in ") and str(folder) in line and str(runs[0]) not in line
    assert not (tmp_path / "x").exists()


def test_compare_cli_refuses_a_run_twice_and_a_setting_no_run_varies(runs, tmp_path, capsys):
    assert main(["compare", str(runs[0]), str(runs[0].parent / ".." / runs[0].parent.name / runs[0].name),
                 "--out", str(tmp_path / "x")]) == 2
    assert "is given twice" in one_line_refusal(capsys)
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "x"), "--against", "cycles"]) == 2
    assert one_line_refusal(capsys) == "error: --against cycles: no schedule kind has runs with different schedule.cycles"
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as e:  # not a schedule setting at all
        main(["compare", *map(str, runs), "--out", str(tmp_path / "x"), "--against", "nosuch"])
    assert e.value.code == 2 and "invalid choice: 'nosuch'" in capsys.readouterr().err
