"""Building the model's input from dialog turns: shared by training and serving (and the condition of
serving's contexts, :func:`encode_contexts`).

A dialog is prefixed with a start-of-dialog marker turn (Zhao et al.), so every real turn is a
response and the first one has a context too. A context is the previous turns (at most
``max_context_turns``), oldest first, each flagged 1 when spoken by the responder.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from .config import BOS_ID, EOS_ID, PAD_ID
from .cvae import CVAE, Batch

if TYPE_CHECKING:
    from .bundle import Bundle


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
            meta: Sequence[Sequence[float]] | None = None, acts: Sequence[int] | None = None,
            distractors: Sequence[Sequence[int]] | None = None) -> Batch:
    """Pad wrapped token lists into a :class:`Batch` (all tensors on CPU)."""
    B = len(contexts)
    C = max(len(c) for c in contexts)
    U = max(len(u) for c in contexts for u in c)
    # Fill numpy buffers with one slice assignment per utterance (cheaper than per-tensor copies).
    ctx = np.full((B, C, U), PAD_ID, dtype=np.int64)
    ctx_lens = np.zeros((B, C), dtype=np.int64)
    ctx_flags = np.zeros((B, C), dtype=np.int64)
    for b, (turns, fl) in enumerate(zip(contexts, flags)):
        row = ctx[b]
        for j, u in enumerate(turns):
            row[j, :len(u)] = u
            ctx_lens[b, j] = len(u)
        ctx_flags[b, :len(fl)] = fl
    batch = Batch(ctx_tokens=torch.from_numpy(ctx), ctx_lens=torch.from_numpy(ctx_lens),
                  ctx_turns=torch.tensor([len(c) for c in contexts], dtype=torch.long),
                  ctx_flags=torch.from_numpy(ctx_flags))
    if responses is not None:
        batch.resp_tokens, batch.resp_lens = padded(responses)
    if topics is not None:
        batch.topic = torch.as_tensor(topics, dtype=torch.long)
    if meta is not None:
        batch.meta = torch.as_tensor(meta, dtype=torch.float32)
    if acts is not None:
        batch.acts = torch.as_tensor(acts, dtype=torch.long)
    if distractors is not None:
        batch.dist_tokens, batch.dist_lens = padded(distractors)
    return batch


def padded(seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Token lists -> (ids (N, T) padded with PAD_ID, lengths (N,)), long, on the CPU."""
    out = np.full((len(seqs), max(len(x) for x in seqs)), PAD_ID, dtype=np.int64)
    for i, x in enumerate(seqs):
        out[i, :len(x)] = x
    return torch.from_numpy(out), torch.tensor([len(x) for x in seqs], dtype=torch.long)


Context = tuple[list[list[int]], list[int]]  # what serving_context builds: the wrapped turns and their flags


def condition(model: CVAE, contexts: Sequence[Context]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The condition c (N, cond_dim) of each built context (:func:`serving_context`) and its prior p(z | c): mean
    and standard deviation (N, Z) each. One call encodes them together (a row's values round with the batch's
    shape)."""
    device = next(model.parameters()).device
    batch = collate([t for t, _ in contexts], [f for _, f in contexts]).to(device)
    cond = model.encode(batch)  # (N, cond_dim)
    mu, logvar = model.prior(cond)  # (N, Z) each
    return cond, mu, (0.5 * logvar).exp()


def encode_contexts(bundle: "Bundle", contexts: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor,
                                                                                  torch.Tensor]:
    """:func:`condition` of dialogs given as text (turns, oldest first), normalised and tokenised as the
    service does."""
    from .text import normalize

    tok, cfg = bundle.tokenizer, bundle.config
    built = [serving_context(tok.encode_batch([normalize(t, bundle.text_style) for t in turns]),
                             tok.dialog_start_id, cfg.max_context_turns, cfg.max_utt_len) for turns in contexts]
    return condition(bundle.model, built)
