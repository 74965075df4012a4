"""Resumable training state in one safetensors file, written atomically, checked on every load.

Tensors (model, optimizer moments, torch RNG states) go in the tensor section; everything else
(step, data cursor, optimizer scalars, config, best validation score) is JSON in the metadata, beside a sha256
of both (:func:`digest`). Nothing is pickled, so a checkpoint from anywhere is safe to open.

Each save first makes the current checkpoint the previous one (``checkpoint.prev.safetensors``), so a
checkpoint damaged on disk leaves one to resume from (:func:`load_latest`).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.files import WriteError, atomic_path, fsync_dir

FORMAT = "cvae-dialog-checkpoint"

log = logging.getLogger("training")


class CheckpointError(RuntimeError):
    pass


def digest(tensors: dict[str, torch.Tensor], state: str) -> str:
    """sha256 of the JSON state and of every tensor's name, dtype, shape and bytes, in name order: what a
    resume reads, independent of how safetensors lays the file out."""
    h = hashlib.sha256(state.encode())
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return h.hexdigest()


def previous(path: Path) -> Path:
    """Where the checkpoint before ``path`` is kept: checkpoint.safetensors -> checkpoint.prev.safetensors."""
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def rotate(path: Path) -> None:
    """Make the checkpoint at ``path`` the previous one. A hard link is put in place of the previous name
    (atomically, so each name holds a whole checkpoint at every moment, and the two share no disk until the
    new checkpoint is renamed over ``path``); where hard links are not supported, ``path`` is renamed, and a
    kill before the new checkpoint is in place leaves only the previous one, which :func:`load_latest` reads."""
    prev = previous(path)
    for stale in path.parent.glob(prev.name + ".tmp*"):
        stale.unlink(missing_ok=True)
    if not path.exists():
        return
    tmp = prev.with_name(f"{prev.name}.tmp{os.getpid()}")
    try:
        os.link(path, tmp)
        os.replace(tmp, prev)
    except OSError:
        tmp.unlink(missing_ok=True)
        try:
            os.replace(path, prev)
        except OSError as e:
            raise WriteError(prev, e.errno or 0, e.strerror or str(e)) from e
    fsync_dir(path.parent)


def atomic_save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, rename over the old file, fsync the folder: a kill at
    any moment leaves either the old checkpoint or the new one, never a torn file. Temporary files left by
    an earlier process killed mid-write are removed first (each is as large as a checkpoint). A write that
    fails (a full disk) raises WriteError naming ``path`` and leaves the old file as it was."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    state = json.dumps(meta)
    with atomic_path(path, clean_stale=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": FORMAT, "state": state, "sha256": digest(tensors, state)})


def save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Rotate (the current checkpoint becomes the previous one), then write the new one atomically. Rotating
    first keeps the disk needed at two checkpoints, as without rotation; if the write then fails, both names
    hold the last good checkpoint."""
    rotate(path)
    atomic_save(path, tensors, meta)


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint; raises CheckpointError naming ``path`` when it is unreadable, truncated,
    not a training checkpoint, or differs from its recorded sha256."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a training checkpoint (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        state = meta["state"]
        recorded = meta.get("sha256")
        if recorded is None:
            log.warning("%s: no checksum (written before checkpoints had one): loaded unverified", path)
        else:
            actual = digest(tensors, state)
            if actual != recorded:
                raise CheckpointError(f"{path}: sha256 mismatch with the one recorded in it (file {actual[:12]}..., "
                                      f"recorded {recorded[:12]}...): the checkpoint is altered")
        return tensors, json.loads(state)
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint: {e}") from None


def load_latest(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path, list[str]]:
    """The newest good checkpoint of ``path`` and :func:`previous`: (tensors, state, the file read, the
    refusals of the files passed over, one line each). Raises CheckpointError, one line naming each file,
    when neither is good."""
    refused = []
    for candidate in (path, previous(path)):
        if not candidate.exists():
            continue
        try:
            tensors, meta = load(candidate)
        except CheckpointError as e:
            refused.append(str(e))
            continue
        return tensors, meta, candidate, refused
    raise CheckpointError("; ".join([*refused, "no good checkpoint to resume from (remove the damaged ones to "
                                               "start the run over, or choose another --out)"]))


def optimizer_state(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = float(v)
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"scalars": scalars, "param_groups": groups}


def restore_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                      meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, v in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = v
    for key, v in meta["scalars"].items():
        pid, name = key.split(".", 1)
        # Adam keeps its step count as a float tensor (0-dim).
        state.setdefault(int(pid), {})[name] = torch.tensor(v, dtype=torch.float32)
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
