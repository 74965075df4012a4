"""The retrieval baseline of the blind rounds: no generation, the replies people gave to the training turns most
like the context's last turn (`python -m training retrieval`).

Okapi BM25 (Robertson et al.; k1 = 1.2, b = 0.75, idf = log(1 + (N - df + 0.5) / (df + 0.5))) over every
training turn that has a next turn, as lower-cased words (training.evaluate.words); a context's query is its
last turn. The replies are the next turns of the best-scoring training turns, best first, without repeats
(compared by their words, punctuation aside) and without a turn that repeats the query itself, n per context. The index is the training
split the bundle records (the generator's own data), so the baseline and the generator know the same dialogs;
the chitchat reader leaves the reserved ids out of every split.

The samples file has the shape of `quality --samples`, so `humaneval export` takes it as a system.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .evaluate import words

log = logging.getLogger("training.retrieval")
K1, B = 1.2, 0.75


class BM25:
    """Okapi BM25 over documents given as word lists: scores(query) -> (N,) float64."""

    def __init__(self, docs: Sequence[Sequence[str]], k1: float = K1, b: float = B):
        from scipy import sparse

        vocab: dict[str, int] = {}
        rows, cols, vals = [], [], []
        lens = np.zeros(len(docs))
        for i, doc in enumerate(docs):
            counts: dict[int, int] = {}
            for w in doc:
                j = vocab.setdefault(w, len(vocab))
                counts[j] = counts.get(j, 0) + 1
            lens[i] = len(doc)
            rows += [i] * len(counts)
            cols += list(counts)
            vals += list(counts.values())
        self.vocab = vocab
        tf = sparse.csr_matrix((np.asarray(vals, dtype=np.float64), (rows, cols)), shape=(len(docs), len(vocab)))
        df = np.bincount(np.asarray(cols, dtype=np.int64), minlength=len(vocab))
        n = len(docs)
        self.idf = np.log(1.0 + (n - df + 0.5) / (df + 0.5))
        avg = lens.mean() if n else 0.0
        norm = k1 * (1 - b + b * lens / max(avg, 1e-9))  # (N,)
        tf = tf.tocoo()
        weight = tf.data * (k1 + 1) / (tf.data + norm[tf.row]) * self.idf[tf.col]
        self.weights = sparse.csc_matrix((weight, (tf.row, tf.col)), shape=tf.shape)  # (N, V)

    def scores(self, query: Sequence[str]) -> np.ndarray:
        """sum over the query's distinct words of their BM25 weight in each document."""
        cols = sorted({self.vocab[w] for w in query if w in self.vocab})
        if not cols:
            return np.zeros(self.weights.shape[0])
        return np.asarray(self.weights[:, cols].sum(axis=1)).ravel()


def _key(text: str) -> str:
    """A turn's words without punctuation: replies that differ only there are the same reply."""
    return " ".join(w for w in words(text) if any(ch.isalnum() for ch in w))


class Retriever:
    """The replies that followed the training turns most like a query turn."""

    def __init__(self, dialogs: Sequence[Any]):
        self.turns: list[str] = []
        self.replies: list[str] = []
        for d in dialogs:
            for a, b in zip(d.turns, d.turns[1:]):
                self.turns.append(a.text)
                self.replies.append(b.text)
        self.index = BM25([words(t) for t in self.turns])
        log.info("retrieval index: %d training turns with a next turn, %d words", len(self.turns),
                 len(self.index.vocab))

    def respond(self, context: Sequence[str], n: int, pool: int = 50) -> list[str]:
        query = words(context[-1])
        s = self.index.scores(query)
        top = np.argsort(-s, kind="stable")[:max(pool, n)]
        out: list[str] = []
        seen = {_key(context[-1])}
        for i in top:
            if s[i] <= 0:
                break
            key = _key(self.replies[i])
            if key and key not in seen:
                seen.add(key)
                out.append(self.replies[i])
                if len(out) == n:
                    break
        return out


def retrieval(bundle_dir: str | Path, corpus: str, data_dir: str, split: str = "test", n: int = 5,
              contexts: int = 200, seed: int = 1, samples_out: str | Path | None = None) -> dict[str, Any]:
    """The baseline on the contexts `quality` rates for the same corpus, split, count and seed; the metrics of
    training.quality.measure, plus where the replies came from."""
    from model.bundle import load_bundle
    from model.text import normalize

    from .data import CorpusError, Source, bundle_sources, read_sources
    from .quality import training_generic, contexts_of, measure

    bundle = load_bundle(bundle_dir)
    train = read_sources(bundle_sources(bundle.extra.get("data", {})), "train")
    retriever = Retriever(train)
    items = contexts_of(read_sources([Source(corpus, data_dir)], split), contexts, seed)
    if not items:
        raise CorpusError(f"the {split} split of {corpus} in {data_dir} has no dialog of two turns or more")
    for it in items:
        it["replies"] = [normalize(r, bundle.text_style) for r in retriever.respond(it["context"], n)]
        it["finish"] = ["eos"] * len(it["replies"])
    res = measure(items, training_generic(bundle))
    res.update({"system": "retrieval (BM25 over the bundle's training turns, replies that followed)",
                "bundle": str(bundle_dir), "bundle_name": bundle.name, "corpus": corpus, "split": split, "n": n,
                "seed": seed, "index_turns": len(retriever.turns),
                "short_lists": sum(len(it["replies"]) < n for it in items),
                "k1": K1, "b": B, "query": "the context's last turn"})
    if samples_out:
        Path(samples_out).parent.mkdir(parents=True, exist_ok=True)
        with open(samples_out, "w") as f:
            for it in items:
                f.write(json.dumps(it) + "\n")
    return res
