"""Examples and batches, as in Zhao et al.'s code.

Each dialog is prefixed with the start-of-dialog marker turn, so every real turn is a response.
Its context is the previous turns (at most ``max_context_turns``, the marker included), each
flagged when spoken by the responder. Utterances are cut to ``max_utt_len`` tokens.

The data order is a pure function of (seed, epoch), so a resumed run continues at the same place
from a single cursor: the number of batches consumed so far.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from model.cvae import Batch
from model.inputs import collate, marker_turn, wrap
from model.text import normalize
from model.tokenizer import Tokenizer

from .data import Dialog

POOL_BATCHES = 50  # bucketing sorts by length inside pools of this many batches


@dataclass(frozen=True)
class Vocabs:
    """Label vocabularies built on the training split; index 0 is "unknown" everywhere."""

    topics: tuple[str, ...] = ("<unk>",)
    acts: tuple[str, ...] = ("<unk>",)
    meta_fields: dict[str, tuple[str, ...]] = field(default_factory=dict)  # categorical fields

    @classmethod
    def build(cls, dialogs: list[Dialog]) -> "Vocabs":
        topics = sorted({d.topic for d in dialogs if d.topic})
        acts = sorted({t.act for d in dialogs for t in d.turns if t.act})
        cats: dict[str, set[str]] = {}
        for d in dialogs:
            for info in d.speakers.values():
                for k, v in info.items():
                    if k != "age" and v is not None:
                        cats.setdefault(k, set()).add(str(v))
        return cls(("<unk>", *topics), ("<unk>", *acts),
                   {k: tuple(sorted(v)) for k, v in sorted(cats.items())})

    @property
    def speaker_dim(self) -> int:
        return 1 + sum(len(v) for v in self.meta_fields.values())

    @property
    def meta_dim(self) -> int:
        return 2 * self.speaker_dim if self.meta_fields else 0

    def speaker_vector(self, info: dict[str, Any]) -> list[float]:
        """age / 100, then a one-hot per categorical field (zeros where unknown)."""
        age = info.get("age")
        vec = [float(age) / 100.0 if isinstance(age, (int, float)) else 0.0]
        for k, values in self.meta_fields.items():
            one = [0.0] * len(values)
            v = info.get(k)
            if v is not None and str(v) in values:
                one[values.index(str(v))] = 1.0
            vec.extend(one)
        return vec

    def to_dict(self) -> dict[str, Any]:
        return {"topics": list(self.topics), "acts": list(self.acts),
                "meta_fields": {k: list(v) for k, v in self.meta_fields.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Vocabs":
        return cls(tuple(d["topics"]), tuple(d["acts"]),
                   {k: tuple(v) for k, v in d["meta_fields"].items()})


@dataclass
class EncodedDialog:
    turns: list[list[int]]  # wrapped ids, marker first
    speakers: list[str | None]  # None for the marker
    acts: list[int]
    topic: int
    meta: dict[str, list[float]]  # speaker -> vector


def encode_turns(dialogs: list[Dialog], tokenizer: Tokenizer, style: str) -> list[list[int]]:
    """Every turn of every dialog, normalised and tokenised, in order."""
    return tokenizer.encode_batch([normalize(t.text, style) for d in dialogs for t in d.turns])


class ExampleSet:
    """All (dialog, response turn) examples of a split, tokenised once (``ids``: encode_turns of the same
    dialogs, when the caller has them already). With ``distractors`` each batch also carries, per example,
    another turn of the same dialog (the response-selection head's negative, :meth:`distractor`)."""

    def __init__(self, dialogs: list[Dialog], tokenizer: Tokenizer, style: str, vocabs: Vocabs,
                 max_context_turns: int, max_utt_len: int, ids: list[list[int]] | None = None,
                 distractors: bool = False):
        self.max_context_turns = max_context_turns
        self.distractors = distractors
        self.vocabs = vocabs
        topic_index = {t: i for i, t in enumerate(vocabs.topics)}
        act_index = {a: i for i, a in enumerate(vocabs.acts)}
        if ids is None:
            ids = encode_turns(dialogs, tokenizer, style)
        self.dialogs: list[EncodedDialog] = []
        self.examples: list[tuple[int, int]] = []
        marker = marker_turn(tokenizer.dialog_start_id)
        k = 0
        for d in dialogs:
            n = len(d.turns)
            turns = [marker] + [wrap(u, max_utt_len) for u in ids[k:k + n]]
            k += n
            enc = EncodedDialog(
                turns=turns, speakers=[None] + [t.speaker for t in d.turns],
                acts=[0] + [act_index.get(t.act or "", 0) for t in d.turns],
                topic=topic_index.get(d.topic or "", 0),
                meta={s: vocabs.speaker_vector(dict(info)) for s, info in d.speakers.items()})
            di = len(self.dialogs)
            self.dialogs.append(enc)
            self.examples.extend((di, i) for i in range(1, len(turns)))
        self.resp_lens = np.array([len(self.dialogs[d].turns[i]) for d, i in self.examples])

    def __len__(self) -> int:
        return len(self.examples)

    def distractor(self, di: int, i: int) -> list[int]:
        """A turn from elsewhere in dialog ``di`` than its turn ``i`` (not the start marker), a pure function
        of (di, i) so that batches stay a function of the data position; a one-turn dialog lends the first
        turn of the next dialog."""
        n = len(self.dialogs[di].turns)
        if n > 2:
            j = 1 + (di * 1_000_003 + i * 7_919) % (n - 2)  # one of the n - 2 real turns other than i
            return self.dialogs[di].turns[j if j < i else j + 1]
        return self.dialogs[(di + 1) % len(self.dialogs)].turns[-1]

    def batch(self, indices: list[int] | np.ndarray) -> Batch:
        contexts, flags, responses, topics, metas, acts, dist = [], [], [], [], [], [], []
        blank = [0.0] * self.vocabs.speaker_dim
        for ix in indices:
            di, i = self.examples[int(ix)]
            d = self.dialogs[di]
            start = max(0, i - self.max_context_turns)
            me = d.speakers[i]
            contexts.append(d.turns[start:i])
            flags.append([int(s is not None and s == me) for s in d.speakers[start:i]])
            responses.append(d.turns[i])
            topics.append(d.topic)
            acts.append(d.acts[i])
            others = [s for s in d.meta if s != me]
            mine = d.meta.get(me, blank) if me is not None else blank
            metas.append(mine + (d.meta[others[0]] if others else blank))
            if self.distractors:
                dist.append(self.distractor(di, i))
        return collate(contexts, flags, responses, topics=topics,
                       meta=metas if self.vocabs.meta_fields else None, acts=acts,
                       distractors=dist if self.distractors else None)

    def epoch_order(self, seed: int, epoch: int, batch_size: int, bucket: bool) -> list[np.ndarray]:
        """The batches of one epoch: shuffled, optionally bucketed by response length."""
        rng = np.random.default_rng([seed, epoch])
        perm = rng.permutation(len(self))
        if bucket:
            pool = batch_size * POOL_BATCHES
            chunks = [perm[i:i + pool] for i in range(0, len(perm), pool)]
            perm = np.concatenate([c[np.argsort(self.resp_lens[c], kind="stable")] for c in chunks])
        batches = [perm[i:i + batch_size] for i in range(0, len(perm), batch_size)]
        order = rng.permutation(len(batches))
        return [batches[j] for j in order]

    def sequential(self, batch_size: int) -> list[np.ndarray]:
        idx = np.arange(len(self))
        return [idx[i:i + batch_size] for i in range(0, len(idx), batch_size)]


class BatchStream:
    """An endless stream of training batches, addressed by a cursor (batches consumed)."""

    def __init__(self, data: ExampleSet, seed: int, batch_size: int, bucket: bool):
        self.data, self.seed, self.batch_size, self.bucket = data, seed, batch_size, bucket
        self._epoch = -1
        self._order: list[np.ndarray] = []

    def indices(self, cursor: int) -> np.ndarray:
        per_epoch = -(-len(self.data) // self.batch_size)
        epoch, i = divmod(cursor, per_epoch)
        if epoch != self._epoch:
            self._order = self.data.epoch_order(self.seed, epoch, self.batch_size, self.bucket)
            self._epoch = epoch
        return self._order[i]

    def epoch_of(self, cursor: int) -> float:
        return cursor / -(-len(self.data) // self.batch_size)
