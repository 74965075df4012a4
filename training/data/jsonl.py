"""User-provided dialogs: one JSON object a line, {"id"?, "topic"?, "turns": [text or {speaker, text, act?}]}."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import CorpusError, Dialog, Turn, json_lines


def _jsonl_turn(raw: Any, index: int, where: str) -> Turn:
    speaker: str | None
    text: str | None
    act: str | None
    if isinstance(raw, str):
        speaker, text, act = "AB"[index % 2], raw, None
    elif isinstance(raw, dict):
        speaker, text, act = raw.get("speaker"), raw.get("text"), raw.get("act")
        if not isinstance(speaker, str) or not speaker.strip():
            raise CorpusError(f"{where}: turn {index}: 'speaker' must be a non-empty string")
        if act is not None and not isinstance(act, str):
            raise CorpusError(f"{where}: turn {index}: 'act' must be a string")
    else:
        raise CorpusError(f"{where}: turn {index}: expected a string or an object, got {type(raw).__name__}")
    if not isinstance(text, str):
        raise CorpusError(f"{where}: turn {index}: 'text' must be a string")
    if not text.strip():
        raise CorpusError(f"{where}: turn {index}: empty text")
    return Turn(speaker=speaker, text=text, act=act)


def read_jsonl(file: Path) -> list[Dialog]:
    if file.suffix != ".jsonl":
        raise CorpusError(f"{file}: expected a .jsonl file")
    dialogs = []
    for lineno, obj in json_lines(file):
        where = f"{file}:{lineno}"
        if not isinstance(obj, dict):
            raise CorpusError(f"{where}: expected an object with 'turns', got {type(obj).__name__}")
        turns = obj.get("turns")
        if not isinstance(turns, list) or not turns:
            raise CorpusError(f"{where}: 'turns' must be a non-empty list")
        dialog_id, topic = obj.get("id", f"{file.stem}-{lineno}"), obj.get("topic")
        if not isinstance(dialog_id, (str, int)) or isinstance(dialog_id, bool):
            raise CorpusError(f"{where}: 'id' must be a string or an integer")
        if topic is not None and not isinstance(topic, str):
            raise CorpusError(f"{where}: 'topic' must be a string")
        dialogs.append(Dialog(str(dialog_id), tuple(_jsonl_turn(t, i, where) for i, t in enumerate(turns)), topic))
    return dialogs
