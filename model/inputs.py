"""Building the model's input from dialog turns: shared by training and serving.

A dialog is prefixed with a start-of-dialog marker turn (Zhao et al.), so every real turn is a
response and the first one has a context too. A context is the previous turns (at most
``max_context_turns``), oldest first, each flagged 1 when spoken by the responder.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .config import BOS_ID, EOS_ID, PAD_ID
from .cvae import Batch


def wrap(ids: Sequence[int], max_len: int) -> list[int]:
    """<s> + the first ``max_len`` ids + </s>."""
    return [BOS_ID, *ids[:max_len], EOS_ID]


def marker_turn(dialog_start_id: int) -> list[int]:
    return [BOS_ID, dialog_start_id, EOS_ID]


def serving_context(turn_ids: Sequence[Sequence[int]], dialog_start_id: int, max_turns: int,
                    max_len: int) -> tuple[list[list[int]], list[int]]:
    """Context of a reply to the last turn of a dialog given from its start.

    Speakers alternate and the last turn is the other party's, so counting back from the end
    the flags run 0, 1, 0, 1, ... The start marker (flag 0) leads when the whole dialog fits.
    """
    turns = [marker_turn(dialog_start_id)] + [wrap(t, max_len) for t in turn_ids]
    flags = [0] + [(len(turn_ids) - 1 - i) % 2 for i in range(len(turn_ids))]
    return turns[-max_turns:], flags[-max_turns:]


def collate(contexts: Sequence[Sequence[Sequence[int]]], flags: Sequence[Sequence[int]],
            responses: Sequence[Sequence[int]] | None = None, topics: Sequence[int] | None = None,
            meta: Sequence[Sequence[float]] | None = None, acts: Sequence[int] | None = None) -> Batch:
    """Pad wrapped token lists into a :class:`Batch` (all tensors on CPU)."""
    B = len(contexts)
    C = max(len(c) for c in contexts)
    U = max(len(u) for c in contexts for u in c)
    ctx = torch.full((B, C, U), PAD_ID, dtype=torch.long)
    ctx_lens = torch.zeros((B, C), dtype=torch.long)
    ctx_flags = torch.zeros((B, C), dtype=torch.long)
    for b, (turns, fl) in enumerate(zip(contexts, flags)):
        for j, u in enumerate(turns):
            ctx[b, j, :len(u)] = torch.as_tensor(u, dtype=torch.long)
            ctx_lens[b, j] = len(u)
        ctx_flags[b, :len(fl)] = torch.as_tensor(fl, dtype=torch.long)
    batch = Batch(ctx_tokens=ctx, ctx_lens=ctx_lens,
                  ctx_turns=torch.tensor([len(c) for c in contexts], dtype=torch.long),
                  ctx_flags=ctx_flags)
    if responses is not None:
        T = max(len(r) for r in responses)
        resp = torch.full((B, T), PAD_ID, dtype=torch.long)
        for b, r in enumerate(responses):
            resp[b, :len(r)] = torch.as_tensor(r, dtype=torch.long)
        batch.resp_tokens = resp
        batch.resp_lens = torch.tensor([len(r) for r in responses], dtype=torch.long)
    if topics is not None:
        batch.topic = torch.as_tensor(topics, dtype=torch.long)
    if meta is not None:
        batch.meta = torch.as_tensor(meta, dtype=torch.float32)
    if acts is not None:
        batch.acts = torch.as_tensor(acts, dtype=torch.long)
    return batch
