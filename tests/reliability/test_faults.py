"""Faults: damaged bundles stop the server from starting (naming the file and the problem), a damaged
checkpoint stops the training CLI (exit 2, naming the file), and a training run killed with SIGKILL at
random points, checkpoint writes included, resumes to the same weights as an uninterrupted run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reliability import killtest
from harness.server import free_port

ROOT = Path(__file__).resolve().parents[2]


def _env() -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("DIALOG_")}, "OMP_NUM_THREADS": "1"}


def _rewrite_manifest(bundle: Path) -> None:
    """Make the manifest agree with the files again (a consistent bundle whose parts do not fit)."""
    from model.bundle import FILES, sha256_file

    m = json.loads((bundle / "manifest.json").read_text())
    m["files"] = {f: sha256_file(bundle / f) for f in FILES}
    (bundle / "manifest.json").write_text(json.dumps(m))


def _truncate(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _flip_byte(p: Path) -> None:
    data = bytearray(p.read_bytes())
    data[-100] ^= 0x01  # inside the tensor data: still a valid safetensors file, different weights
    p.write_bytes(bytes(data))


def _other_config(b: Path, other: Path) -> None:
    shutil.copy(other / "config.json", b / "config.json")
    _rewrite_manifest(b)


def _other_tokenizer(b: Path, other: Path) -> None:
    shutil.copy(other / "tokenizer.model", b / "tokenizer.model")
    _rewrite_manifest(b)


# (name, damage(bundle, other_bundle), file(s) the message may name, words of the problem)
BUNDLE_FAULTS = [
    ("missing_weights", lambda b, o: (b / "model.safetensors").unlink(), "model.safetensors", "missing file"),
    ("missing_tokenizer", lambda b, o: (b / "tokenizer.model").unlink(), "tokenizer.model", "missing file"),
    ("missing_manifest", lambda b, o: (b / "manifest.json").unlink(), "manifest.json", "missing manifest"),
    ("truncated_weights", lambda b, o: _truncate(b / "model.safetensors"), "model.safetensors", "sha256 mismatch"),
    ("altered_weights", lambda b, o: _flip_byte(b / "model.safetensors"), "model.safetensors", "sha256 mismatch"),
    ("altered_config", lambda b, o: (b / "config.json").write_text("{}"), "config.json", "sha256 mismatch"),
    # the first check to notice names the pair that disagrees: the tokenizer's vocabulary or the weights' shapes
    ("config_of_another_model", _other_config, ("tokenizer.model", "model.safetensors"), "in config.json"),
    ("tokenizer_of_another_model", _other_tokenizer, "tokenizer.model", "does not match"),
    ("truncated_weights_remanifested", lambda b, o: (_truncate(b / "model.safetensors"), _rewrite_manifest(b)),
     "model.safetensors", "cannot read weights"),
]


def test_damaged_bundles_refuse_to_start(rel_bundle, other_bundle, tmp_path):
    """Every fault at once (the servers start in parallel): exit status non-zero, promptly, with a message
    naming the file and the problem, and the port never serves."""
    procs = {}
    for name, damage, _, _ in BUNDLE_FAULTS:
        b = tmp_path / name
        shutil.copytree(rel_bundle, b)
        damage(b, other_bundle)
        cmd = [sys.executable, "-m", "app", "serve", "--bundle", str(b), "--port", str(free_port()),
               "--torch-threads", "1"]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True)
    failures = []
    for name, _, fname, problem in BUNDLE_FAULTS:
        out, _ = procs[name].communicate(timeout=120)
        code = procs[name].returncode
        line = next((l for l in out.splitlines() if "cannot load the model bundle" in l), "")
        names = (fname,) if isinstance(fname, str) else fname
        if code == 0 or not any(f"{tmp_path / name / f}:" in line for f in names) or problem not in line:
            failures.append((name, code, line or out[-500:]))
    assert not failures, failures


def test_undamaged_copy_loads(rel_bundle, tmp_path):
    from model.bundle import load_bundle

    shutil.copytree(rel_bundle, tmp_path / "copy")
    assert load_bundle(tmp_path / "copy").name == "tiny"


# ----- training ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("run")
    corpus = killtest.write_corpus(work / "corpus", dialogs=16)
    config = work / "c.toml"
    config.write_text(killtest.CONFIG.format(corpus=corpus, steps=10, ckpt_every=5, eval_every=5))
    r = subprocess.run(killtest.train_cmd(config, work / "run"), cwd=ROOT, env=_env(), capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return config, work / "run"


CKPT_FAULTS = {
    "truncated": _truncate,
    "empty": lambda p: p.write_bytes(b""),
    "garbage": lambda p: p.write_bytes(os.urandom(4096)),
    "bundle_weights": None,  # a valid safetensors file that is not a training checkpoint
}


def test_corrupt_checkpoint_exits_2_naming_it(finished_run, tmp_path):
    config, run = finished_run
    procs = {}
    for name, damage in CKPT_FAULTS.items():
        d = tmp_path / name
        shutil.copytree(run, d)
        # both the checkpoint and the previous one: with one of them whole the run resumes from it
        for ck in (d / "checkpoint.safetensors", d / "checkpoint.prev.safetensors"):
            if damage is None:
                shutil.copy(d / "bundle" / "model.safetensors", ck)
            else:
                damage(ck)
        procs[name] = subprocess.Popen(killtest.train_cmd(config, d), cwd=ROOT, env=_env(), text=True,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    failures = []
    for name, p in procs.items():
        _, err = p.communicate(timeout=300)
        ck = tmp_path / name / "checkpoint.safetensors"
        last = err.strip().splitlines()[-1] if err.strip() else ""
        if (p.returncode != 2 or not last.startswith(f"error: {ck}:") or "Traceback" in err
                or f"{ck.with_name('checkpoint.prev.safetensors')}:" not in last):
            failures.append((name, p.returncode, err[-600:]))
    assert not failures, failures


def test_sigkill_resume_matches_uninterrupted_run(tmp_path):
    """Three kills (at a random step, inside a checkpoint write when it can be caught, during start-up),
    each followed by a resume; then a torn temporary checkpoint is planted (what a kill during a write
    leaves) before the last start. Same weights, optimiser state and logged losses as a run never killed."""
    def plant(out: Path) -> None:
        good = (out / "checkpoint.safetensors").read_bytes()
        (out / "checkpoint.safetensors.tmp999999").write_bytes(good[: len(good) // 3])
        (out / "checkpoint.safetensors.tmp").write_bytes(b"\0" * 100)

    s = killtest.killtest(tmp_path, kills=3, steps=40, ckpt_every=8, seed=1, before_final=plant)
    assert s["problems"] == [], json.dumps(s, indent=1)[:3000]
    assert s["kills"] == 3 and s["identical_weights"] and s["identical_losses"]
    assert s["max_steps_lost"] <= 8
    assert s["records"][-1]["resumed_at"] is not None
