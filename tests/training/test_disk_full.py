"""A disk that fills during training (issue 23, item 2), on a real size-limited filesystem (a tmpfs mounted
for the test; the tests skip with the reason where mounting is not permitted). A checkpoint, best-weights or
bundle write that hits ENOSPC stops the run with one line naming the file (exit 2, no traceback), the previous
checkpoint and bundle stay whole and loadable, and the same command, once space is freed, ends where an
uninterrupted run ends, bit for bit."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from model.bundle import load_bundle, save_bundle, verify_bundle
from model.files import WriteError, atomic_write
from tests.conftest import REPO, build_tiny_bundle
from tests.training.test_loop import final_weights, rows, sets, train_cli
from training import checkpoint as ckpt
from training import loop

EXTRA = ("train.eval_every=6",)  # checkpoints and validations at 6, 12, 18, 24


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs (a tiny run's folder takes about 1 MiB), unmounted after the test."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {(r.stderr or r.stdout).strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class Filler:
    """Takes the free space of a filesystem, all but ``leave`` bytes; ``free()`` gives it back."""

    def __init__(self, folder: Path):
        self.path = folder / f"filler-{uuid.uuid4().hex}"

    def fill(self, leave: int = 0) -> None:
        chunk = b"\0" * (1 << 16)
        with open(self.path, "ab", buffering=0) as f:  # unbuffered: nothing left to flush at close
            try:
                while True:
                    f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
        if leave:
            os.truncate(self.path, max(0, self.path.stat().st_size - leave))

    def free(self) -> None:
        self.path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def straight(synthetic_corpus, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    return run


def best_steps(run: Path) -> list[int]:
    """The validation steps that wrote best.safetensors (each a new lowest ELBO)."""
    out, best = [], float("inf")
    for r in rows(run):
        if r.get("split") == "valid" and r["elbo"] < best:
            best = r["elbo"]
            out.append(r["step"])
    return out


def no_temporaries(run: Path) -> None:
    left = [str(p.relative_to(run)) for p in run.rglob("*") if ".tmp" in p.name]
    assert not left, left


def one_line_error(capsys, path: Path) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"error: {path}: cannot write (No space left on device, errno 28): the disk is full"), err
    return err[0]


def same_as_straight(run: Path, straight: Path) -> None:
    a, b = final_weights(straight), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in rows(run) if r.get("split") != "valid"]
    assert steps == [r["step"] for r in rows(straight) if r.get("split") != "valid"]
    assert load_bundle(run / "bundle").sha256 == load_bundle(straight / "bundle").sha256


def test_a_full_disk_during_a_checkpoint_write(small_fs, straight, synthetic_corpus, monkeypatch, capsys):
    run, filler = small_fs / "run", Filler(small_fs)
    real = ckpt.atomic_save

    def fills_at_12(path, tensors, meta):
        if meta["step"] == 12:
            filler.fill(leave=path.stat().st_size // 2)  # the write starts, and runs out half way
        real(path, tensors, meta)

    monkeypatch.setattr(ckpt, "atomic_save", fills_at_12)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 2
    one_line_error(capsys, run / "checkpoint.safetensors")
    for path in (run / "checkpoint.safetensors", ckpt.previous(run / "checkpoint.safetensors")):
        assert ckpt.load(path)[1]["step"] == 6  # the last good checkpoint, under both names
    no_temporaries(run)
    filler.free()
    monkeypatch.setattr(ckpt, "atomic_save", real)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    same_as_straight(run, straight)


def test_a_full_disk_during_a_best_weights_write(small_fs, straight, synthetic_corpus, monkeypatch, capsys):
    steps = best_steps(straight)
    assert len(steps) >= 2, steps  # a best file to keep, and a later one whose write fails
    run, filler = small_fs / "run", Filler(small_fs)
    real, writes = loop.atomic_write, []

    def fills_on_the_second_best(path, data):
        if Path(path).name == "best.safetensors":
            writes.append(path)
            if len(writes) == 2:
                filler.fill(leave=Path(path).stat().st_size // 2)
        real(path, data)

    monkeypatch.setattr(loop, "atomic_write", fills_on_the_second_best)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 2
    one_line_error(capsys, run / "best.safetensors")
    with safe_open(str(run / "best.safetensors"), framework="pt") as f:
        assert f.metadata()["step"] == str(steps[0])  # the previous best weights, whole
    assert ckpt.load(run / "checkpoint.safetensors")[1]["step"] == steps[1] - 6
    no_temporaries(run)
    filler.free()
    monkeypatch.setattr(loop, "atomic_write", real)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    same_as_straight(run, straight)


def test_a_full_disk_when_the_metrics_log_grows(small_fs, straight, synthetic_corpus, monkeypatch, capsys):
    """The first row of metrics.jsonl needs a new page of the filesystem: none is left."""
    run, filler = small_fs / "run", Filler(small_fs)
    real, calls = loop.Trainer._log, []

    def fills_first(self, row):
        calls.append(row["step"])
        if len(calls) == 1:
            filler.fill()
        real(self, row)

    monkeypatch.setattr(loop.Trainer, "_log", fills_first)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (f"error: {run / 'metrics.jsonl'}: cannot write (No space left on device, "
                                        "errno 28): the disk is full; its last line may be torn, and a resume "
                                        "drops it"), err
    filler.free()
    monkeypatch.setattr(loop.Trainer, "_log", real)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    same_as_straight(run, straight)


def test_a_full_disk_during_the_bundle_export(small_fs, straight, synthetic_corpus, monkeypatch, capsys):
    """The run is done and its bundle written; exported again (the same command) on a full disk, the old bundle
    stays whole, then the export after space is freed gives the same bundle."""
    run, filler = small_fs / "run", Filler(small_fs)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    before = verify_bundle(run / "bundle")[1]
    real = loop.save_bundle

    def fills_first(out, *args, **kwargs):
        filler.fill(leave=(Path(out) / "model.safetensors").stat().st_size * 2)  # model fits, tokenizer not
        return real(out, *args, **kwargs)

    monkeypatch.setattr(loop, "save_bundle", fills_first)
    capsys.readouterr()
    assert train_cli(synthetic_corpus, run, *EXTRA) == 2
    one_line_error(capsys, run / "bundle" / "tokenizer.model")
    assert load_bundle(run / "bundle").sha256 == before
    no_temporaries(run)
    filler.free()
    monkeypatch.setattr(loop, "save_bundle", real)
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    assert verify_bundle(run / "bundle")[1] == before  # the same bundle, exported again
    same_as_straight(run, straight)


def test_a_bundle_saved_over_a_full_disk_keeps_the_old_one(small_fs, tmp_path):
    """save_bundle itself: every file is staged before any is renamed into place, so a failure on any of them
    (here, each in turn) leaves the old bundle verifying, and removes what it staged."""
    bundle = build_tiny_bundle(small_fs / "tiny")
    before = verify_bundle(bundle)[1]
    other = load_bundle(build_tiny_bundle(tmp_path / "other", latent_dim=12))
    assert other.sha256 != before
    filler = Filler(small_fs)
    sizes = {f: (tmp_path / "other" / f).stat().st_size for f in ("model.safetensors", "tokenizer.model")}
    for leave in (0, sizes["model.safetensors"] // 2, sizes["model.safetensors"] + sizes["tokenizer.model"] // 2):
        filler.fill(leave=leave)
        with pytest.raises(WriteError) as e:
            save_bundle(bundle, other.model, other.tokenizer, name="other", text_style="plain")
        assert e.value.errno == errno.ENOSPC and str(e.value).startswith(f"{bundle}/")
        filler.free()
        assert verify_bundle(bundle)[1] == before and load_bundle(bundle).config.latent_dim == 8
        no_temporaries(bundle)
    assert save_bundle(bundle, other.model, other.tokenizer, name="tiny", text_style="plain") == other.sha256


def test_atomic_write_on_a_full_disk_names_the_file_and_keeps_the_old_one(small_fs):
    path = small_fs / "data.bin"
    atomic_write(path, b"old")
    filler = Filler(small_fs)
    filler.fill()
    with pytest.raises(WriteError) as e:
        atomic_write(path, b"x" * (1 << 20))
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)
    assert str(e.value) == (f"{path}: cannot write (No space left on device, errno 28): the disk is full; "
                            "the file there, if any, is unchanged")
    assert path.read_bytes() == b"old" and sorted(os.listdir(small_fs)) == sorted(["data.bin", filler.path.name])


def test_the_cli_stops_in_one_line_when_the_disk_fills_mid_run_and_resumes_exactly(small_fs, straight,
                                                                                    synthetic_corpus):
    """The real command in its own process: paused once it has a checkpoint, the disk filled, resumed; whichever
    write comes next (the log, best weights, a checkpoint) fails, in one line with exit 2."""
    run, filler = small_fs / "run", Filler(small_fs)
    cmd = [sys.executable, "-m", "training", "train", "--config", "training/configs/tiny.toml",
           "--out", str(run), *sets(synthetic_corpus, *EXTRA)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not (run / "checkpoint.safetensors").exists():
        time.sleep(0.005)
    proc.send_signal(signal.SIGSTOP)
    filler.fill()
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "Traceback" not in err and last.startswith(f"error: {run}/") and "errno 28" in last, err[-2000:]
    good = ckpt.load(run / "checkpoint.safetensors")[1]["step"]
    assert 6 <= good < 24
    no_temporaries(run)
    filler.free()
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"resumed from {run / 'checkpoint.safetensors'} at step {good}" in r.stderr
    same_as_straight(run, straight)
    assert json.loads((run / "config.json").read_text())["train"]["eval_every"] == 6
    shutil.rmtree(run)
