"""The training pipeline end to end on a tiny synthetic corpus: CLI, metrics, bundle, resume,
evaluation, compare, and a two-process DistributedDataParallel run."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.bundle import load_bundle, verify_bundle
from tests.conftest import REPO, TINY_OVERRIDES
from training.__main__ import main as cli
from training.config import ConfigError, load_config


def sets(corpus: Path, *extra: str) -> list[str]:
    out = []
    for item in [*TINY_OVERRIDES, f"data.dir={corpus}", *extra]:
        out += ["--set", item]
    return out


def train_cli(corpus: Path, out: Path, *extra: str) -> int:
    return cli(["train", "--config", "training/configs/tiny.toml", "--out", str(out), *sets(corpus, *extra)])


def rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def final_weights(run: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}


def test_train_writes_metrics_checkpoint_and_bundle(synthetic_corpus, tmp_path):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run) == 0
    train_rows = [r for r in rows(run) if r.get("split") != "valid"]
    valid_rows = [r for r in rows(run) if r.get("split") == "valid"]
    for key in ("step", "beta", "lr", "rc_loss", "kl", "bow_loss", "tokens_per_s"):
        assert all(key in r for r in train_rows), key
    assert [r["step"] for r in valid_rows] == [12, 24]
    assert {"rc_ppl", "kl", "elbo", "bow_loss"} <= set(valid_rows[0])
    # two cycles of 12 steps, rising over the first 6: up to 1, back to 0 at step 13, up again
    betas = {r["step"]: r["beta"] for r in train_rows}
    assert (betas[4], betas[8], betas[12], betas[16], betas[20]) == (0.5, 1.0, 1.0, 0.5, 1.0)
    manifest, sha = verify_bundle(run / "bundle")
    assert set(manifest["files"]) == {"model.safetensors", "config.json", "tokenizer.model", "lexicon.txt",
                                      "reply_lm.safetensors"}
    bundle = load_bundle(run / "bundle")
    assert bundle.sha256 == sha and bundle.text_style == "plain"
    # the reranker's reply model covers the training replies: each seen bigram counted, the model's vocabulary
    assert bundle.reply_lm is not None and bundle.reply_lm.vocab_size == bundle.config.vocab_size
    assert bundle.reply_lm.counts.sum() > 24 and len(bundle.reply_lm) > 10
    from model.rerank import AntiLM
    assert AntiLM(bundle).kind == "probes"
    reply = bundle.tokenizer.encode("hello")
    assert AntiLM(bundle, "reply_lm").logprob([reply, []]) == [bundle.reply_lm.logprobs([reply])[0], 0.0]
    assert json.loads((run / "config.json").read_text())["train"]["steps"] == 24


def test_bundle_reload_gives_identical_outputs(synthetic_corpus, tmp_path):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run, "train.eval_every=1000") == 0
    a, b = load_bundle(run / "bundle"), load_bundle(run / "bundle")
    weights = {k[6:]: v for k, v in final_weights(run).items()}
    for k, v in a.model.state_dict().items():
        assert torch.equal(v, weights[k]), k  # no validation ran, so the bundle holds the last step
    from model.inputs import collate, serving_context
    turns, flags = serving_context([a.tokenizer.encode("Hello, how are you?")], a.tokenizer.dialog_start_id, 10, 40)
    batch = collate([turns], [flags])
    with torch.inference_mode():
        assert torch.equal(a.model.prior(a.model.encode(batch))[0], b.model.prior(b.model.encode(batch))[0])


def test_export_best_writes_the_lowest_validation_elbo_weights_beside_the_last(synthetic_corpus, tmp_path):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run, "train.export=last", "train.export_best=true") == 0
    valid = [r for r in rows(run) if r.get("split") == "valid"]
    best_step = min(valid, key=lambda r: r["elbo"])["step"]
    last, best = load_bundle(run / "bundle"), load_bundle(run / "bundle-best")
    assert (last.extra["training"]["selected_step"], last.extra["training"]["selected_by"]) == (24, "last step")
    assert best.extra["training"]["selected_step"] == best_step
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        saved = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in best.model.state_dict().items():
        assert torch.equal(v, saved[k].to(v.dtype)), k
    weights = {k[6:]: v for k, v in final_weights(run).items()}
    for k, v in last.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    # without the flag only bundle/ is written
    assert train_cli(synthetic_corpus, tmp_path / "plain", "train.export=last") == 0
    assert not (tmp_path / "plain" / "bundle-best").exists()


def test_bow_weight_zero_trains_without_the_bag_of_words_loss(synthetic_corpus, tmp_path):
    """train.bow_weight=0: the bag-of-words head gets no gradient, so it keeps its initial weights (Adam moves
    nothing with zero gradients) while the rest of the model trains; the loss is still logged. Runs of 1 and
    24 steps start from the same initial weights."""
    runs = {}
    for w, steps in (("0", 1), ("0", 24), ("1", 1), ("1", 24)):
        run = tmp_path / f"w{w}-{steps}"
        assert train_cli(synthetic_corpus, run, f"train.bow_weight={w}", f"train.steps={steps}",
                         "train.eval_every=1000") == 0
        runs[w, steps] = {k[6:]: v for k, v in final_weights(run).items()}
    bow = [k for k in runs["0", 1] if k.startswith("bow.")]
    assert bow and all(torch.equal(runs["0", 1][k], runs["0", 24][k]) for k in bow)
    assert not any(torch.equal(runs["1", 1][k], runs["1", 24][k]) for k in bow)
    assert not torch.equal(runs["0", 1]["embedding.weight"], runs["0", 24]["embedding.weight"])
    assert all(r["bow_loss"] > 0 for r in rows(tmp_path / "w0-24") if r.get("split") != "valid")
    with pytest.raises(ConfigError, match="train.bow_weight"):
        load_config("training/configs/tiny.toml", ["train.bow_weight=-1"])


def test_resume_after_sigkill_matches_an_uninterrupted_run(synthetic_corpus, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    extra = ("train.steps=40", "train.ckpt_every=5", "train.eval_every=20")
    assert train_cli(synthetic_corpus, straight, *extra) == 0
    cmd = [sys.executable, "-m", "training", "train", "--config", "training/configs/tiny.toml",
           "--out", str(killed), *sets(synthetic_corpus, *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ckpt = killed / "checkpoint.safetensors"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if ckpt.exists():
            with safe_open(str(ckpt), framework="pt") as f:
                if json.loads(f.metadata()["state"])["step"] >= 10:
                    break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with safe_open(str(ckpt), framework="pt") as f:
        killed_at = json.loads(f.metadata()["state"])["step"]
    assert 10 <= killed_at < 40
    assert train_cli(synthetic_corpus, killed, *extra) == 0
    a, b = final_weights(straight), final_weights(killed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the resumed log has each step once
    steps = [r["step"] for r in rows(killed) if r.get("split") != "valid"]
    assert steps == sorted(set(steps)) and steps[-1] == 40


def test_resume_refuses_a_different_config(synthetic_corpus, tmp_path):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run) == 0
    assert train_cli(synthetic_corpus, run, "train.lr=0.5") == 2


def test_corrupt_checkpoint_is_named(synthetic_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run) == 0
    ckpt, prev = run / "checkpoint.safetensors", run / "checkpoint.prev.safetensors"
    for path in (ckpt, prev):  # with only one damaged the run resumes from the other (test_checkpoint_integrity)
        path.write_bytes(path.read_bytes()[:100])
    assert train_cli(synthetic_corpus, run) == 2
    err = capsys.readouterr().err
    assert str(ckpt) in err and str(prev) in err


@pytest.mark.parametrize("override,needle", [
    ("train.stpes=3", "train.stpes"), ("model.latent=3", "model.latent"),
    ("train.steps=abc", "train.steps"), ("schedule.kind=sometimes", "schedule.kind"),
])
def test_config_errors_name_the_key(override, needle, capsys):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        load_config("training/configs/tiny.toml", [override])
    assert cli(["train", "--config", "tiny.toml", "--out", "/nonexistent/x", "--set", override]) == 2
    assert needle in capsys.readouterr().err


def test_yaml_config_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: y\nschedule:\n  kind: monotonic\n  warmup_steps: 7\ntrain:\n  steps: 9\n")
    cfg = load_config(path, ["train.steps=11", "data.corpus=jsonl"])
    assert (cfg.name, cfg.schedule.kind, cfg.schedule.warmup_steps, cfg.train.steps) == ("y", "monotonic", 7, 11)


def test_shipped_configs_load():
    for path in sorted((REPO / "training" / "configs").glob("*.toml")):
        cfg = load_config(path)
        assert cfg.name == path.stem
    pair = [load_config(REPO / f"training/configs/swda-{k}.toml").to_dict() for k in ("cyclical", "monotonic")]
    for d in pair:
        d.pop("name")
        d["schedule"].pop("kind")
    assert pair[0] == pair[1]  # the study's pair differs only in the schedule


def test_evaluate_and_compare_on_two_tiny_runs(synthetic_corpus, tmp_path):
    runs = []
    for kind in ("cyclical", "monotonic"):
        run = tmp_path / kind
        assert train_cli(synthetic_corpus, run, f"schedule.kind={kind}", "schedule.warmup_steps=12",
                         f"name=tiny-{kind}") == 0
        assert cli(["evaluate", "--bundle", str(run / "bundle"), "--out", str(run / "eval" / "test.json"),
                    "-n", "3", "--samples", str(run / "eval" / "samples.jsonl")]) == 0
        runs.append(run)
    res = json.loads((runs[0] / "eval" / "test.json").read_text())
    assert res["split"] == "test" and res["n_samples"] == 3
    assert res["bundle_sha256"] == verify_bundle(runs[0] / "bundle")[1]
    samples = [json.loads(l) for l in (runs[0] / "eval" / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == res["n_contexts"] and all(len(s["replies"]) == 3 for s in samples)
    # the figures are those of the samples written beside them (each metric is tested by hand in test_evaluate)
    from training.evaluate import reply_metrics

    by_hand = reply_metrics([s["replies"] for s in samples], [s["reference"] for s in samples])
    assert {k: res[k] for k in by_hand} == pytest.approx(by_hand)
    assert res["rc_ppl"] == pytest.approx(math.exp(res["rc_nll"]))
    assert res["elbo"] == pytest.approx(res["rc_loss"] + res["kl"])
    assert 0 <= res["active_units"] <= res["latent_dim"] and res["mi"] <= res["mi_ceiling"]
    out = tmp_path / "report"
    assert cli(["compare", *map(str, runs), "--out", str(out), "--notes", "commands here"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["runs"]) == {"tiny-cyclical", "tiny-monotonic"}
    assert report["runs"]["tiny-cyclical"]["test"]["rc_ppl"] == pytest.approx(res["rc_ppl"])
    for png in ("beta.png", "kl.png", "rc_loss.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "commands here" in (out / "report.md").read_text()


@pytest.mark.slow
def test_two_process_ddp_run(synthetic_corpus, tmp_path):
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training", "train", "--config", "training/configs/tiny.toml", "--out", str(run),
           *sets(synthetic_corpus, "train.steps=12")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r["step"] for r in rows(run) if r.get("split") != "valid"]
    assert steps == [4, 8, 12]  # rank 0 logs alone: each step once
    with safe_open(str(run / "checkpoint.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["state"])["world"] == 2
    load_bundle(run / "bundle")


@pytest.mark.slow
def test_tiny_config_on_real_swda(tmp_path):
    from tests.conftest import shared_data

    data = shared_data("swda")
    run = tmp_path / "tiny"
    assert cli(["train", "--config", "training/configs/tiny.toml", "--out", str(run),
                "--set", f"data.dir={data}", "--set", "train.steps=40", "--set", "train.log_every=2",
                "--set", "train.num_threads=1"]) == 0
    betas = [r["beta"] for r in rows(run) if r.get("split") != "valid"]
    assert max(betas) == 1.0 and min(betas[1:]) < 0.5  # cycles: beta falls back after reaching 1
    assert (run / "bundle" / "manifest.json").is_file()


def test_sigterm_checkpoints_stops_and_the_same_command_resumes_exactly(synthetic_corpus, tmp_path):
    """SIGTERM mid-run: the step in progress finishes, a checkpoint is written, the process exits 143 (not
    done), and the same command (with another thread count) ends where an uninterrupted run ends; the CPU and
    wall time of both starts add up in the metrics."""
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    extra = ("train.steps=200", "train.ckpt_every=1000", "train.eval_every=100", "train.log_every=10")
    assert train_cli(synthetic_corpus, straight, *extra) == 0
    cmd = [sys.executable, "-m", "training", "train", "--config", "training/configs/tiny.toml",
           "--out", str(stopped), *sets(synthetic_corpus, *extra)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        m = stopped / "metrics.jsonl"
        if m.exists() and len(m.read_text().splitlines()) >= 3:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be stopped"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM at step" in err and "resumes" in err
    with safe_open(str(stopped / "checkpoint.safetensors"), framework="pt") as f:
        state = json.loads(f.metadata()["state"])
    assert 30 <= state["step"] < 200 and state["cpu_s"] > 0 and state["wall_s"] > 0
    assert not (stopped / "bundle").exists()  # not done, so nothing exported
    assert train_cli(synthetic_corpus, stopped, *extra, "train.num_threads=2") == 0  # threads may change
    a, b = final_weights(straight), final_weights(stopped)
    assert all(torch.equal(a[k], b[k]) for k in a)
    times = [r["cpu_s"] for r in rows(stopped) if r.get("split") != "valid"]
    assert times == sorted(times) and times[-1] > state["cpu_s"]  # counted over both starts


def test_a_setting_added_after_a_run_started_resumes_at_its_default(synthetic_corpus, tmp_path):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run, "train.steps=12") == 0
    cfg = json.loads((run / "config.json").read_text())
    del cfg["train"]["rs_weight"]  # as written by a run started before the setting existed
    (run / "config.json").write_text(json.dumps(cfg))
    assert train_cli(synthetic_corpus, run, "train.steps=24") == 2  # steps differ: still refused
    assert train_cli(synthetic_corpus, run, "train.steps=12") == 0
    assert train_cli(synthetic_corpus, run, "train.steps=12", "train.rs_weight=1.0") == 2


def test_response_selection_head_trains_and_is_logged(synthetic_corpus, tmp_path):
    run = tmp_path / "rs"
    assert train_cli(synthetic_corpus, run, "model.rs_dim=8", "train.rs_weight=1.0") == 0
    train = [r for r in rows(run) if r.get("split") != "valid"]
    valid = [r for r in rows(run) if r.get("split") == "valid"]
    assert all(r["rs_loss"] > 0 for r in train)
    assert valid and all(0 <= r["rs_acc"] <= 1 and r["rs_loss"] > 0 for r in valid)
    bundle = load_bundle(run / "bundle")
    assert bundle.config.rs_dim == 8
    plain = tmp_path / "plain"
    assert train_cli(synthetic_corpus, plain, "train.steps=4") == 0
    assert all(r["rs_loss"] == 0 for r in rows(plain) if r.get("split") != "valid")


def test_init_from_starts_a_new_run_from_a_bundles_weights(synthetic_corpus, tmp_path):
    """The long run's fallback when its folder is lost: a new run from the last committed weights."""
    first = tmp_path / "first"
    assert train_cli(synthetic_corpus, first, "train.steps=6") == 0
    again = tmp_path / "again"
    assert train_cli(synthetic_corpus, again, "train.steps=1", "train.lr=1e-12",
                     f"train.init_from={first / 'bundle'}") == 0
    a = load_bundle(first / "bundle").model.state_dict()
    b = load_bundle(again / "bundle").model.state_dict()
    assert all(torch.allclose(a[k].float(), b[k].float(), atol=1e-3) for k in a)  # one step at lr 1e-12
    assert (again / "tokenizer.model").read_bytes() == (first / "bundle" / "tokenizer.model").read_bytes()
    other = tmp_path / "other"
    assert train_cli(synthetic_corpus, other, "train.steps=1", "model.latent_dim=4",
                     f"train.init_from={first / 'bundle'}") == 2  # another model: refused, one line
    assert train_cli(synthetic_corpus, tmp_path / "none", "train.init_from=/nonexistent") == 2


def test_export_writes_a_bundle_from_a_runs_checkpoint_and_leaves_the_run_alone(synthetic_corpus, tmp_path):
    """The long run's snapshots for blind rounds: a bundle of its best or last weights while it trains."""
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run, "train.steps=24", "train.export=last") == 0
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    assert cli(["export", "--run", str(run), "--which", "last", "--out", str(tmp_path / "last")]) == 0
    assert cli(["export", "--run", str(run), "--out", str(tmp_path / "best")]) == 0
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the run was only read
    last, shipped = load_bundle(tmp_path / "last"), load_bundle(run / "bundle")
    a, b = last.model.state_dict(), shipped.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # the run's own export at its last step
    best = load_bundle(tmp_path / "best")
    assert best.extra["training"]["selected_by"] == "lowest validation ELBO"
    assert cli(["export", "--run", str(tmp_path), "--out", str(tmp_path / "x")]) == 2  # not a run folder
