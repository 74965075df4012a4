"""Checkpoint integrity (issue 23, item 3): every checkpoint carries a sha256 of its tensors and state, resume
verifies it, and a truncated or bit-flipped checkpoint is refused by path; the run then resumes from the
previous checkpoint (checkpoint.prev.safetensors) exactly, or stops with a one-line error when none is good.
The checkpoints damaged here are real ones, of tiny training runs."""
from __future__ import annotations

import errno
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.test_loop import final_weights, rows, train_cli
from training import checkpoint as ckpt

EXTRA = ("train.eval_every=1000",)  # checkpoints at 6, 12, 18, 24; validation at the last step only


@pytest.fixture(scope="module")
def straight(synthetic_corpus, tmp_path_factory) -> Path:
    """A finished run of 24 steps: its last checkpoint is at 24, the previous one at 18."""
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    return run


def copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest, symlinks=True)
    return dest


def step_of(path: Path) -> int:
    return int(ckpt.load(path)[1]["step"])


def header(path: Path) -> tuple[int, dict]:
    """(where the tensor data starts, the safetensors JSON header)."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    return 8 + n, json.loads(raw[8:8 + n])


def flip_bit(path: Path, offset: int, bit: int = 0) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 1 << bit
    path.write_bytes(bytes(raw))


def flip_in_weights(path: Path) -> None:
    """One bit in the middle of the embedding matrix: a file that safetensors still reads."""
    start, head = header(path)
    lo, hi = head["model.embedding.weight"]["data_offsets"]
    flip_bit(path, start + (lo + hi) // 2, 3)


def flip_in_state(path: Path) -> None:
    """The step in the JSON state, 24 -> 14: still valid JSON, still a training checkpoint."""
    raw = path.read_bytes()
    old = b'\\"step\\": 24,'
    assert raw.count(old) == 1
    path.write_bytes(raw.replace(old, b'\\"step\\": 14,'))


def flip_last_byte(path: Path) -> None:
    flip_bit(path, path.stat().st_size - 1, 7)


def truncate(path: Path) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: len(raw) * 2 // 3])


DAMAGE = {"bit in the weights": flip_in_weights, "step in the state": flip_in_state,
          "last byte": flip_last_byte, "truncated": truncate, "one byte short": lambda p: p.write_bytes(
              p.read_bytes()[:-1])}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_checkpoint_is_refused_and_the_run_resumes_exactly_from_the_previous_one(
        damage, straight, synthetic_corpus, tmp_path, caplog):
    run = copy_run(straight, tmp_path / "run")
    path, prev = run / "checkpoint.safetensors", run / "checkpoint.prev.safetensors"
    assert step_of(path) == 24 and step_of(prev) == 18
    DAMAGE[damage](path)
    with pytest.raises(ckpt.CheckpointError, match=str(path)):
        ckpt.load(path)
    with caplog.at_level(logging.INFO, logger="training"):
        assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    assert f"{path}: " in caplog.text and "refused" in caplog.text
    assert f"resumed from {prev} at step 18" in caplog.text
    # the damaged file is kept aside, and the run ends where the uninterrupted one ended, bit for bit
    assert (run / "checkpoint.corrupt.safetensors").is_file()
    assert step_of(path) == 24 and step_of(prev) == 18
    a, b = final_weights(straight), final_weights(run)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in rows(run) if r.get("split") != "valid"]
    assert steps == [4, 8, 12, 16, 20, 24]  # the rows after step 18 logged again, once


def test_without_a_good_checkpoint_the_run_stops_with_one_line_naming_each(straight, synthetic_corpus, tmp_path,
                                                                             capsys):
    run = copy_run(straight, tmp_path / "run")
    path, prev = run / "checkpoint.safetensors", run / "checkpoint.prev.safetensors"
    truncate(path)
    flip_in_weights(prev)
    before = sorted(os.listdir(run))
    assert train_cli(synthetic_corpus, run, *EXTRA) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {path}: "), err
    assert f"{prev}: sha256 mismatch" in err[0] and "no good checkpoint" in err[0]
    assert sorted(os.listdir(run)) == before  # nothing renamed or rewritten


def test_a_single_damaged_checkpoint_stops_the_run(synthetic_corpus, tmp_path, capsys):
    run = tmp_path / "run"
    assert train_cli(synthetic_corpus, run, "train.steps=6", *EXTRA) == 0
    assert not (run / "checkpoint.prev.safetensors").exists()  # the first checkpoint has none before it
    flip_in_weights(run / "checkpoint.safetensors")
    assert train_cli(synthetic_corpus, run, "train.steps=6", *EXTRA) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {run / 'checkpoint.safetensors'}: sha256 mismatch"), err


def test_only_the_previous_checkpoint_left_resumes_from_it(straight, synthetic_corpus, tmp_path, caplog):
    """What a kill between the two renames of a rotation leaves where hard links are not supported."""
    run = copy_run(straight, tmp_path / "run")
    (run / "checkpoint.safetensors").unlink()
    with caplog.at_level(logging.INFO, logger="training"):
        assert train_cli(synthetic_corpus, run, *EXTRA) == 0
    assert f"resumed from {run / 'checkpoint.prev.safetensors'} at step 18" in caplog.text
    a, b = final_weights(straight), final_weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_previous_checkpoint_is_a_separate_file(straight):
    """Rotation links the current file to the previous name, then the new one is renamed over the current name:
    the two are different files, so damage to one leaves the other whole."""
    a, b = (straight / "checkpoint.safetensors").stat(), (straight / "checkpoint.prev.safetensors").stat()
    assert a.st_ino != b.st_ino and a.st_nlink == b.st_nlink == 1
    assert not [n for n in os.listdir(straight) if ".tmp" in n]


def tiny_state() -> tuple[dict[str, torch.Tensor], dict]:
    g = torch.Generator().manual_seed(0)
    tensors = {"model.w": torch.randn(4, 3, generator=g), "model.b": torch.zeros(3, dtype=torch.bfloat16),
               "optim.0.exp_avg": torch.randn(2, generator=g), "rng.torch": torch.get_rng_state()}
    return tensors, {"step": 7, "cursor": 7, "best": 1.5}


def test_save_and_load_round_trip_with_a_checksum(tmp_path):
    tensors, meta = tiny_state()
    path = tmp_path / "checkpoint.safetensors"
    ckpt.save(path, tensors, meta)
    got, got_meta = ckpt.load(path)
    assert got_meta == meta and got.keys() == tensors.keys()
    assert all(torch.equal(got[k], tensors[k]) for k in tensors)
    _, head = header(path)
    assert len(head["__metadata__"]["sha256"]) == 64


def test_a_second_save_keeps_the_first_as_previous(tmp_path):
    tensors, meta = tiny_state()
    path = tmp_path / "checkpoint.safetensors"
    ckpt.save(path, tensors, meta)
    ckpt.save(path, tensors, {**meta, "step": 8})
    ckpt.save(path, tensors, {**meta, "step": 9})
    assert step_of(path) == 9 and step_of(ckpt.previous(path)) == 8
    assert sorted(os.listdir(tmp_path)) == ["checkpoint.prev.safetensors", "checkpoint.safetensors"]


def test_rotation_without_hard_links_renames(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    tensors, meta = tiny_state()
    path = tmp_path / "checkpoint.safetensors"
    ckpt.save(path, tensors, meta)
    monkeypatch.setattr(os, "link", no_links)
    ckpt.save(path, tensors, {**meta, "step": 8})
    assert step_of(path) == 8 and step_of(ckpt.previous(path)) == 7


def test_a_checkpoint_written_before_checksums_still_loads(tmp_path, caplog):
    """Runs in progress when checksums came hold checkpoints without one: they resume, with a warning."""
    from safetensors.torch import save_file

    tensors, meta = tiny_state()
    path = tmp_path / "checkpoint.safetensors"
    save_file(tensors, str(path), metadata={"format": ckpt.FORMAT, "state": json.dumps(meta)})
    with caplog.at_level(logging.WARNING, logger="training"):
        got, got_meta = ckpt.load(path)
    assert got_meta == meta and "no checksum" in caplog.text
