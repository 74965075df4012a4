"""Resumable training state in one safetensors file, written atomically.

Tensors (model, optimizer moments, torch RNG states) go in the tensor section; everything else
(step, data cursor, optimizer scalars, config, best validation score) is JSON in the metadata.
Nothing is pickled, so a checkpoint from anywhere is safe to open.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from model.files import atomic_path

FORMAT = "cvae-dialog-checkpoint"


class CheckpointError(RuntimeError):
    pass


def atomic_save(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Write to a temporary file, fsync, rename over the old file, fsync the folder: a kill at
    any moment leaves either the old checkpoint or the new one, never a torn file. Temporary files left by
    an earlier process killed mid-write are removed first (each is as large as a checkpoint)."""
    with atomic_path(path, clean_stale=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={"format": FORMAT, "state": json.dumps(meta)})


def load(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path}: not a training checkpoint (format {meta.get('format')!r})")
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        return tensors, json.loads(meta["state"])
    except (SafetensorError, OSError, ValueError, KeyError) as e:
        raise CheckpointError(f"{path}: corrupt or unreadable checkpoint: {e}") from None


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
