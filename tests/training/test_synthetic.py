"""The synthetic experiment (training.synthetic) on a very short run, and its measures on literal posteriors."""
import json
import math

import pytest
import torch

from training.__main__ import main
from training.schedules import beta_at
from training.synthetic import SyntheticConfig, make_sequences, posterior_measures, train_one
from training.synthetic_plots import panel_steps

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_measures_of_separate_and_of_identical_posteriors():
    far = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0], [0.0, -6.0]], dtype=torch.float64)
    tight = torch.full((4, 2), math.log(0.01), dtype=torch.float64)
    sep = posterior_measures(far, tight, samples=200, seed=0)
    assert sep["separated"] == 4 and sep["assigned"] == [1.0] * 4
    assert sep["mi"] == pytest.approx(math.log(4), abs=1e-6) and sep["mi_ceiling"] == pytest.approx(math.log(4))
    same = posterior_measures(torch.zeros(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64),
                              samples=200, seed=0)
    assert same["separated"] == 0 and same["mi"] == pytest.approx(0.0, abs=1e-9)


def test_panel_steps_are_a_quarter_up_each_ramp_and_each_cycle_end():
    assert panel_steps(6400, 4, 0.5) == [200, 1600, 1800, 3200, 3400, 4800, 5000, 6400]


def test_sequences_are_fixed_by_the_seed():
    cfg = SyntheticConfig()
    x = make_sequences(cfg)
    assert x.shape == (10, 10) and int(x.min()) >= 1 and int(x.max()) <= cfg.vocab_size
    assert torch.equal(x, make_sequences(cfg)) and not torch.equal(x, make_sequences(SyntheticConfig(seed=2)))


def test_training_records_snapshots_and_learns():
    cfg = SyntheticConfig(steps=30, snapshot_every=10, samples=50)
    x = make_sequences(cfg)
    hist = train_one(cfg, "cyclical", x)
    assert [h["step"] for h in hist] == [0, 10, 20, 30]
    assert [h["beta"] for h in hist[1:]] == [beta_at(t, 30, cfg.schedule("cyclical")) for t in (10, 20, 30)]
    assert len(hist[-1]["mu"]) == 10 and len(hist[-1]["mu"][0]) == 2
    assert hist[-1]["rc"] < hist[0]["rc"] - 1.0  # 30 full-batch steps already fit the sequences somewhat
    again = train_one(cfg, "cyclical", x)
    assert again[-1]["mu"] == hist[-1]["mu"]  # reproducible on the same seed


def test_the_cli_writes_figures_and_a_summary(tmp_path):
    out = tmp_path / "synthetic"
    assert main(["synthetic", "--out", str(out), "--steps", "40", "--snapshot-every", "10"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["final"]) == {"monotonic", "cyclical"}
    for kind in ("monotonic", "cyclical"):
        final = summary["final"][kind]
        assert 0 <= final["separated"] <= 10 and final["mi"] <= final["mi_ceiling"] + 1e-9 and final["kl"] >= 0
    history = json.loads((out / "history.json").read_text())
    mono, cyc = history["histories"]["monotonic"], history["histories"]["cyclical"]
    assert len(mono) == len(cyc) == 5
    assert mono[0]["mu"] == cyc[0]["mu"]  # both schedules start from the same weights
    assert mono[-1]["mu"] != cyc[-1]["mu"]
    for name in ("latent.png", "curves.png"):
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    assert summary["figures"]["animation"] == "latent.gif"
    assert (out / "latent.gif").read_bytes()[:6] == b"GIF89a"


def test_the_cli_rejects_an_unknown_schedule(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "--out", str(tmp_path), "--schedules", "monotonic,sawtooth"])
    assert e.value.code == 2 and "unknown schedule(s) sawtooth" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value", [("--steps", "0"), ("--cycles", "0"), ("--ratio", "2"), ("--ratio", "0"),
                                         ("--ratio", "nan"), ("--schedules", "foo"), ("--schedules", ","),
                                         ("--snapshot-every", "0"), ("--seed", "-1")])
def test_the_cli_refuses_values_out_of_range_in_one_line(flag, value, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main(["synthetic", "--out", str(tmp_path / "out"), flag, value])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"argument {flag}: " in err.strip().splitlines()[-1]
    assert not (tmp_path / "out").exists()


def test_the_cli_refuses_more_cycles_than_steps(tmp_path, capsys):
    assert main(["synthetic", "--out", str(tmp_path / "out"), "--steps", "3", "--cycles", "4"]) == 2
    assert capsys.readouterr().err.strip() == "error: synthetic: --cycles (4) must be at most --steps (3)"
    assert not (tmp_path / "out").exists()
