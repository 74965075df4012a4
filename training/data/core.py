"""What every corpus reader shares: the `Dialog` record, the corpus names, the error a bad file raises, and the
helpers that find a split's file and read JSON lines."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CORPORA = ("swda", "dailydialog", "chitchat", "jsonl")
SPLITS = ("train", "valid", "test")
TEXT_STYLE = {"swda": "swda", "dailydialog": "dailydialog", "chitchat": "chat", "jsonl": "plain"}


@dataclass(frozen=True)
class Turn:
    speaker: str  # "A"/"B" etc.
    text: str  # raw corpus text (not normalised)
    act: str | None = None
    emotion: str | None = None


@dataclass(frozen=True)
class Dialog:
    id: str
    turns: tuple[Turn, ...]
    topic: str | None = None
    # speaker -> metadata (swda: age: int; sex, education, dialect: str with the corpus's quotes/spaces stripped)
    speakers: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


class CorpusError(ValueError):
    """A corpus file that cannot be read; the message names the file and the 1-based line number."""


def split_file(folder: Path, split: str, suffix: str) -> Path:
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a corpus folder holding {split}{suffix}: {folder}")
    file = folder / f"{split}{suffix}"
    if not file.is_file():
        raise FileNotFoundError(f"missing corpus file: {file}")
    return file


def json_lines(file: Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed object) for every non-blank line."""
    with file.open("rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: not UTF-8 ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise CorpusError(f"{file}:{lineno}: malformed JSON ({e.msg} at column {e.colno})") from None
            except RecursionError:
                raise CorpusError(f"{file}:{lineno}: JSON nested too deeply") from None
            yield lineno, obj


def dialog_key(dialog: Dialog) -> str:
    """Case-folded, white-space-collapsed text of all turns: how the release's duplicates are found."""
    return "\x1f".join(" ".join(t.text.casefold().split()) for t in dialog.turns)
