"""The BYU Chit-Chat corpus, read in place from the published wheel (or an unpacked dataset.json): all three
splits from one parse, assigned by a hash of the conversation id; reserved ids, stubs and repeats dropped."""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from pathlib import Path
from typing import Any

from .core import SPLITS, CorpusError, Dialog, Turn, dialog_key

logger = logging.getLogger("training.data")

CHITCHAT_WHEEL = "chitchat_dataset-0.9.0-py3-none-any.whl"
CHITCHAT_MEMBER = "chitchat_dataset/dataset.json"
CHITCHAT_RESERVED = "reserved_ids.txt"
# Conversations abandoned at once: under this many turns they hold no exchange worth learning a reply from.
CHITCHAT_MIN_TURNS = 4
# The split, by the first 8 hex digits of sha256(conversation id) modulo 100.
CHITCHAT_SPLIT = {"train": range(0, 90), "valid": range(90, 95), "test": range(95, 100)}


def chitchat_split_of(conversation_id: str) -> str:
    """The split a conversation belongs to: sha256(id) read as a number, modulo 100: 0-89 train, 90-94 valid,
    95-99 test. Depends on the id alone, so a conversation never changes split when others come or go."""
    bucket = int(hashlib.sha256(conversation_id.encode("utf-8")).hexdigest()[:8], 16) % 100
    return next(name for name, r in CHITCHAT_SPLIT.items() if bucket in r)


def _chitchat_source(path: Path) -> tuple[Path, Path | None]:
    """(the wheel or dataset.json, the reserved-ids file beside it or None)."""
    if path.is_dir():
        for name in (CHITCHAT_WHEEL, "dataset.json"):
            if (path / name).is_file():
                file = path / name
                break
        else:
            wheels = sorted(path.glob("chitchat_dataset-*.whl"))
            if not wheels:
                raise FileNotFoundError(f"missing chitchat data: {path / CHITCHAT_WHEEL} (the chitchat-dataset wheel)")
            file = wheels[-1]
    else:
        file = path
    reserved = file.parent / CHITCHAT_RESERVED
    return file, reserved if reserved.is_file() else None


def _chitchat_json(file: Path) -> Any:
    try:
        if file.suffix == ".whl":
            with zipfile.ZipFile(file) as archive:
                try:
                    raw = archive.read(CHITCHAT_MEMBER)
                except KeyError:
                    raise CorpusError(f"{file}: missing member {CHITCHAT_MEMBER}") from None
        else:
            raw = file.read_bytes()
        return json.loads(raw.decode("utf-8"))
    except zipfile.BadZipFile:
        raise CorpusError(f"{file}: not a wheel (zip) file") from None
    except UnicodeDecodeError as e:
        raise CorpusError(f"{file}: not UTF-8 ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise CorpusError(f"{file}: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None


def read_reserved_ids(file: Path) -> set[str]:
    return {line.strip() for line in file.read_text().splitlines() if line.strip() and not line.startswith("#")}


def _chitchat_turns(conv_id: str, conv: Any, where: str) -> tuple[Turn, ...]:
    """A conversation's turns: each turn's messages joined with a space; empty turns dropped and the
    neighbours they separated (one sender) joined; speakers named A, B by order of appearance."""
    if not isinstance(conv, dict) or not isinstance(conv.get("messages"), list):
        raise CorpusError(f"{where}: conversation {conv_id}: expected an object with a 'messages' list")
    merged: list[tuple[str, str]] = []
    for i, turn in enumerate(conv["messages"]):
        if not isinstance(turn, list) or not all(isinstance(m, dict) for m in turn):
            raise CorpusError(f"{where}: conversation {conv_id}: turn {i} is not a list of messages")
        texts = [m.get("text") for m in turn]
        if not all(isinstance(t, str) for t in texts):
            raise CorpusError(f"{where}: conversation {conv_id}: turn {i} has a message without text")
        text = " ".join(" ".join(texts).split())
        if not text:
            continue
        sender = str(turn[0].get("sender", f"turn{i % 2}"))
        if merged and merged[-1][0] == sender:
            merged[-1] = (sender, merged[-1][1] + " " + text)
        else:
            merged.append((sender, text))
    names: dict[str, str] = {}
    return tuple(Turn(names.setdefault(s, "AB"[len(names) % 2]), t) for s, t in merged)


def chitchat_dialogs(path: str | Path) -> tuple[dict[str, list[Dialog]], dict[str, int]]:
    """All three splits of the chitchat corpus, and counts of what was dropped and why.

    Dropped from every split, in this order: the reserved ids (``reserved``), conversations with fewer than
    CHITCHAT_MIN_TURNS non-empty turns (``stubs``), and repeats of an earlier conversation, by case-folded
    text, ids in sorted order (``repeats``).
    """
    file, reserved_file = _chitchat_source(Path(path))
    if reserved_file is None:
        logger.warning("chitchat: no %s beside %s: no conversation is held out for independent evaluation",
                       CHITCHAT_RESERVED, file)
    reserved = read_reserved_ids(reserved_file) if reserved_file else set()
    data = _chitchat_json(file)
    if not isinstance(data, dict):
        raise CorpusError(f"{file}: expected an object mapping conversation ids to conversations")
    counts = {"conversations": len(data), "reserved": 0, "stubs": 0, "repeats": 0}
    splits: dict[str, list[Dialog]] = {s: [] for s in SPLITS}
    seen: set[str] = set()
    for conv_id in sorted(data):
        if conv_id in reserved:
            counts["reserved"] += 1
            continue
        turns = _chitchat_turns(conv_id, data[conv_id], str(file))
        if len(turns) < CHITCHAT_MIN_TURNS:
            counts["stubs"] += 1
            continue
        dialog = Dialog(f"chitchat-{conv_id}", turns, None)
        key = dialog_key(dialog)
        if key in seen:
            counts["repeats"] += 1
            continue
        seen.add(key)
        splits[chitchat_split_of(conv_id)].append(dialog)
    for s in SPLITS:
        counts[s] = len(splits[s])
    return splits, counts


_CHITCHAT_CACHE: dict[tuple[str, float], tuple[dict[str, list[Dialog]], dict[str, int]]] = {}


def read_chitchat(path: Path, split: str) -> list[Dialog]:
    file, reserved = _chitchat_source(path)
    key = (str(file.resolve()), file.stat().st_mtime + (reserved.stat().st_mtime if reserved else 0.0))
    if key not in _CHITCHAT_CACHE:  # one parse of the 39 MB file serves all three splits
        _CHITCHAT_CACHE.clear()
        _CHITCHAT_CACHE[key] = chitchat_dialogs(path)
        counts = _CHITCHAT_CACHE[key][1]
        logger.info("chitchat: %d conversations; dropped %d reserved, %d stubs (< %d turns), %d repeats; "
                    "train %d, valid %d, test %d", counts["conversations"], counts["reserved"], counts["stubs"],
                    CHITCHAT_MIN_TURNS, counts["repeats"], counts["train"], counts["valid"], counts["test"])
    return list(_CHITCHAT_CACHE[key][0][split])
