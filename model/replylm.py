"""log p(r): a bigram language model of the training replies over SentencePiece pieces, for the reranker's
anti-language-model term (model.rerank), an alternative to the default neural estimate (the decoder run over
a few "any context" probes, a teacher-forced pass over (candidates x probes) rows through the vocabulary
projection per request): here a reply's log-probability is a few table lookups. Blind raters judged the
replies it chose less sensible than the default's (docs/quality.md), so it is an option (DIALOG_ANTI_LM).

Interpolated Kneser-Ney (Chen and Goodman 1998, the bigram case), one absolute discount D = n1 / (n1 + 2 n2)
from the counts of bigrams seen once and twice:

    p(w | v) = max(c(v, w) - D, 0) / c(v)  +  D * T(v) / c(v) * p_cont(w)        (c(v) > 0)
    p(w | v) = p_cont(w)                                                        (c(v) = 0)
    p_cont(w) = (N(. w) + 1) / (N(. .) + V)

where T(v) counts the distinct pieces seen after v, N(. w) the distinct pieces seen before w and N(. .) the
distinct bigrams; the add-one on the continuation counts leaves no piece at probability zero. A reply is
scored as <s> r_1 ... r_n </s>: n + 1 terms, </s> included, as the decoder scores it.

Stored in the bundle as ``reply_lm.safetensors`` (the bigram keys v * V + w sorted, their counts, and the
per-piece tables), built from the training split by the trainer or ``python -m training lexicon``.
"""
from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import BOS_ID, EOS_ID
from .files import atomic_write

FILE = "reply_lm.safetensors"


class ReplyLM:
    def __init__(self, vocab_size: int, keys: np.ndarray, counts: np.ndarray, discount: float):
        if keys.ndim != 1 or keys.shape != counts.shape:
            raise ValueError("keys and counts must be 1-D arrays of one length")
        if len(keys) and (np.any(np.diff(keys) <= 0) or keys[0] < 0 or keys[-1] >= vocab_size * vocab_size):
            raise ValueError("bigram keys must be distinct, sorted and below vocab_size ** 2")
        if np.any(counts <= 0) or not 0.0 < discount < 1.0:
            raise ValueError("counts must be positive and the discount in (0, 1)")
        V = self.vocab_size = vocab_size
        self.keys, self.counts, self.discount = keys.astype(np.int64), counts.astype(np.float64), float(discount)
        prev, nxt = self.keys // V, self.keys % V
        self.c_prev = np.bincount(prev, weights=self.counts, minlength=V)  # c(v)
        self.t_prev = np.bincount(prev, minlength=V).astype(np.float64)  # T(v)
        self.p_cont = (np.bincount(nxt, minlength=V) + 1.0) / (len(self.keys) + V)

    @classmethod
    def build(cls, replies: Iterable[Sequence[int]], vocab_size: int) -> "ReplyLM":
        """From piece-id sequences (no <s> or </s>); ids must lie in [0, vocab_size)."""
        V = vocab_size
        parts = []
        for r in replies:
            seq = np.fromiter((BOS_ID, *r, EOS_ID), dtype=np.int64)
            parts.append(seq[:-1] * V + seq[1:])
        allk = np.concatenate(parts) if parts else np.zeros(0, np.int64)
        if len(allk) and (allk.min() < 0 or allk.max() >= V * V):
            raise ValueError(f"piece ids must lie in [0, {V})")
        keys, counts = np.unique(allk, return_counts=True)
        n1, n2 = int(np.sum(counts == 1)), int(np.sum(counts == 2))
        discount = n1 / (n1 + 2 * n2) if n1 else 0.5
        return cls(V, keys, counts, min(max(discount, 0.05), 0.95))

    def __len__(self) -> int:
        return len(self.keys)

    def logprobs(self, replies: Sequence[Sequence[int]]) -> list[float]:
        """log p(<s> r </s>) per reply, nats."""
        if not replies:
            return []
        V = self.vocab_size
        seqs = [np.fromiter((BOS_ID, *r, EOS_ID), dtype=np.int64) for r in replies]
        prev = np.concatenate([s[:-1] for s in seqs])
        nxt = np.concatenate([s[1:] for s in seqs])
        if prev.min() < 0 or nxt.max() >= V:
            raise ValueError(f"piece ids must lie in [0, {V})")
        key = prev * V + nxt
        at = np.minimum(np.searchsorted(self.keys, key), max(len(self.keys) - 1, 0))
        c = np.where(self.keys[at] == key, self.counts[at], 0.0) if len(self.keys) else np.zeros(len(key))
        cv, tv, pc = self.c_prev[prev], self.t_prev[prev], self.p_cont[nxt]
        seen = cv > 0
        safe = np.where(seen, cv, 1.0)
        p = np.where(seen, np.maximum(c - self.discount, 0.0) / safe + self.discount * tv / safe * pc, pc)
        lp = np.log(p)
        ends = np.cumsum([len(s) - 1 for s in seqs])
        return np.add.reduceat(lp, np.concatenate([[0], ends[:-1]])).tolist()

    def save(self, path: str | Path) -> None:
        tensors = {"keys": torch.from_numpy(self.keys), "counts": torch.from_numpy(self.counts.astype(np.int32)),
                   "discount": torch.tensor([self.discount], dtype=torch.float64),
                   "vocab_size": torch.tensor([self.vocab_size], dtype=torch.int64)}
        atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata={"format": "reply-bigram-kn"}))

    @classmethod
    def load(cls, path: str | Path) -> "ReplyLM":
        t = load_file(str(path))
        missing = {"keys", "counts", "discount", "vocab_size"} - set(t)
        if missing:
            raise ValueError(f"missing tensor(s) {', '.join(sorted(missing))}")
        return cls(int(t["vocab_size"][0]), t["keys"].numpy(), t["counts"].numpy(), float(t["discount"][0]))
