"""The Switchboard Dialog Act corpus (SwDA) in the NeuralDialog-CVAE JSONL format of Zhao et al. (2017): one
dialog a line, `utts` a list of [speaker, text, [act, ...]], beside the topic and each speaker's metadata."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .core import CorpusError, Dialog, Turn, json_lines


def _strip_meta(value: Any) -> Any:
    return value.strip().strip('"').strip() if isinstance(value, str) else value


def read_swda(file: Path) -> list[Dialog]:
    dialogs = []
    for lineno, obj in json_lines(file):
        try:
            turns = tuple(
                Turn(speaker=str(spk), text=str(text), act=str(meta[0]) if meta else None)
                for spk, text, meta in obj["utts"]
            )
            speakers = {
                spk: {k: _strip_meta(v) for k, v in obj[spk].items()}
                for spk in sorted({t.speaker for t in turns})
                if isinstance(obj.get(spk), dict)
            }
            topic = _strip_meta(obj.get("topic")) or None
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise CorpusError(f"{file}:{lineno}: not a SwDA dialog ({type(e).__name__}: {e})") from None
        if not turns:
            raise CorpusError(f"{file}:{lineno}: dialog has no utterances")
        conv = obj.get("conversation_no")
        dialogs.append(Dialog(f"swda-{file.stem}-{conv if conv is not None else lineno}", turns, topic, speakers))
    return dialogs
