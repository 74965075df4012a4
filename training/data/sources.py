"""Reading a corpus by name, and mixing corpora: the sources of a run, each normalised in its own corpus's
style, the training split weighted."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .chitchat import read_chitchat
from .core import CORPORA, SPLITS, TEXT_STYLE, CorpusError, Dialog, Turn, split_file
from .dailydialog import read_dailydialog
from .jsonl import read_jsonl
from .swda import read_swda

logger = logging.getLogger("training.data")


def read_corpus(corpus: str, path: str | Path, split: str) -> list[Dialog]:
    """Read one split ("train", "valid" or "test") of `corpus` (one of CORPORA) from `path`."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {CORPORA}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(path)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative to the current directory, {Path.cwd()})"
        raise FileNotFoundError(f"{corpus} corpus not found: {path}{where}")
    if corpus == "swda":
        return read_swda(split_file(path, split, ".jsonl"))
    if corpus == "dailydialog":
        return read_dailydialog(path, split)
    if corpus == "chitchat":
        return read_chitchat(path, split)
    return read_jsonl(path if path.is_file() else split_file(path, split, ".jsonl"))


@dataclass(frozen=True)
class Source:
    """One corpus of a mixed run. ``weight`` scales its share of the training split: each of its training
    dialogs appears int(weight) times per epoch, and once more when the fractional part of the weight exceeds a
    hash of the dialog's id (so 0.5 keeps a fixed half). Validation and test splits are not weighted."""

    corpus: str
    dir: str
    weight: float = 1.0

    @classmethod
    def parse(cls, raw: Any, where: str) -> "Source":
        if not isinstance(raw, Mapping):
            raise ValueError(f"{where}: expected a table with corpus, dir and weight")
        unknown = sorted(set(raw) - {"corpus", "dir", "weight"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {', '.join(unknown)}")
        corpus, folder, weight = raw.get("corpus"), raw.get("dir"), raw.get("weight", 1.0)
        if corpus not in CORPORA:
            raise ValueError(f"{where}.corpus: expected one of {', '.join(CORPORA)}, got {corpus!r}")
        if not isinstance(folder, str) or not folder:
            raise ValueError(f"{where}.dir: expected a folder path")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0 < weight <= 100:
            raise ValueError(f"{where}.weight: expected a number in (0, 100], got {weight!r}")
        return cls(corpus, folder, float(weight))


def mix_style(corpora: list[str]) -> str:
    """The text style of a model trained on these corpora: theirs when they agree, else ``chat``, which keeps
    what people type and is what a mixed model's users send."""
    styles = {TEXT_STYLE[c] for c in corpora}
    return styles.pop() if len(styles) == 1 else "chat"


def _hash_fraction(dialog_id: str) -> float:
    return int(hashlib.sha256(dialog_id.encode("utf-8")).hexdigest()[:8], 16) / 16**8


def weighted(dialogs: list[Dialog], weight: float) -> list[Dialog]:
    whole, frac = int(weight), weight - int(weight)
    out = [d for d in dialogs for _ in range(whole)]
    return out + [d for d in dialogs if _hash_fraction(d.id) < frac]


def normalized(dialogs: list[Dialog], style: str) -> list[Dialog]:
    from model.text import normalize

    return [Dialog(d.id, tuple(Turn(t.speaker, normalize(t.text, style), t.act, t.emotion) for t in d.turns),
                   d.topic, d.speakers) for d in dialogs]


def read_sources(sources: list[Source], split: str) -> list[Dialog]:
    """The dialogs of every source, each normalised in its own corpus's style (so that DailyDialog's spaced
    punctuation is undone before a mixed model's ``chat`` style applies), the training split weighted."""
    out: list[Dialog] = []
    for src in sources:
        dialogs = normalized(read_corpus(src.corpus, src.dir, split), TEXT_STYLE[src.corpus])
        if split == "train" and src.weight != 1.0:
            dialogs = weighted(dialogs, src.weight)
        logger.info("%s %s: %d dialogs (weight %g)", src.corpus, split, len(dialogs), src.weight)
        out.extend(dialogs)
    return out


def bundle_sources(data: dict) -> list[Source]:
    """The training sources a bundle records (its config's ``data``: a corpus and folder, or a mix)."""
    if data.get("corpus") == "mix":
        return [Source.parse(raw, f"data.mix[{i}]") for i, raw in enumerate(data.get("mix") or [])]
    if data.get("corpus") and data.get("dir"):
        return [Source(data["corpus"], data["dir"])]
    raise CorpusError("the bundle records no training data")
