"""Corpus readers: a corpus on disk -> `Dialog`s holding the raw corpus text.

The readers do not normalise: `read_sources` normalises each corpus in its own style (`model.text.normalize`
with `TEXT_STYLE[corpus]`), and `training.batching` turns the dialogs into examples and batches (normalising
each turn in the style it is given as it tokenises). Readers never unpickle and never extract archives to disk. Corpus formats
are described in `../shared/data/README.md`.

One module per corpus (`swda`, `dailydialog`, `chitchat`, `jsonl`), what they share in `core` (the `Dialog`
record, `CorpusError`, the corpus names and text styles), and `sources`: `read_corpus` by name and the mixing
of several corpora (`Source`, `read_sources`).
"""

from __future__ import annotations

from .chitchat import (CHITCHAT_MEMBER, CHITCHAT_MIN_TURNS, CHITCHAT_RESERVED, CHITCHAT_SPLIT, CHITCHAT_WHEEL,
                       chitchat_dialogs, chitchat_split_of, read_reserved_ids)
from .core import CORPORA, SPLITS, TEXT_STYLE, CorpusError, Dialog, Turn
from .dailydialog import dailydialog_overlap
from .sources import Source, bundle_sources, mix_style, normalized, read_corpus, read_sources, weighted

__all__ = [
    "bundle_sources",
    "CHITCHAT_MEMBER", "CHITCHAT_MIN_TURNS", "CHITCHAT_RESERVED", "CHITCHAT_SPLIT", "CHITCHAT_WHEEL", "CORPORA",
    "CorpusError", "Dialog", "SPLITS", "Source", "TEXT_STYLE", "Turn", "chitchat_dialogs", "chitchat_split_of",
    "dailydialog_overlap", "mix_style", "normalized", "read_corpus", "read_reserved_ids", "read_sources", "weighted",
]  # fmt: skip
