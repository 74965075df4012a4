"""Corpus readers -> examples -> batches.

Readers (this part) turn a corpus on disk into `Dialog`s holding the raw corpus text; normalisation
(`model.text.normalize` with `TEXT_STYLE[corpus]`) is applied later by the pipeline. Readers never unpickle and
never extract archives to disk. Corpus formats are described in `../shared/data/README.md`.
"""

from __future__ import annotations

import json
import logging
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("training.data")

CORPORA = ("swda", "dailydialog", "jsonl")
SPLITS = ("train", "valid", "test")
TEXT_STYLE = {"swda": "swda", "dailydialog": "dailydialog", "jsonl": "plain"}


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


def read_corpus(corpus: str, path: str | Path, split: str) -> list[Dialog]:
    """Read one split ("train", "valid" or "test") of `corpus` (one of CORPORA) from `path`."""
    if corpus not in CORPORA:
        raise ValueError(f"unknown corpus {corpus!r}; expected one of {CORPORA}")
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{corpus} corpus not found: {path}")
    if corpus == "swda":
        return _read_swda(_split_file(path, split, ".jsonl"))
    if corpus == "dailydialog":
        return _read_dailydialog(path, split)
    return _read_jsonl(path if path.is_file() else _split_file(path, split, ".jsonl"))


def _split_file(folder: Path, split: str, suffix: str) -> Path:
    if not folder.is_dir():
        raise NotADirectoryError(f"expected a corpus folder holding {split}{suffix}: {folder}")
    file = folder / f"{split}{suffix}"
    if not file.is_file():
        raise FileNotFoundError(f"missing corpus file: {file}")
    return file


def _json_lines(file: Path) -> Iterator[tuple[int, Any]]:
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


# -- swda ---------------------------------------------------------------------------------------------------------


def _strip_meta(value: Any) -> Any:
    return value.strip().strip('"').strip() if isinstance(value, str) else value


def _read_swda(file: Path) -> list[Dialog]:
    dialogs = []
    for lineno, obj in _json_lines(file):
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


# -- dailydialog ---------------------------------------------------------------------------------------------------

_DD_ZIP = {"train": "train", "valid": "validation", "test": "test"}
_DD_ACTS = {"1": "inform", "2": "question", "3": "directive", "4": "commissive"}
_DD_EMOTIONS = {
    "0": "no_emotion", "1": "anger", "2": "disgust", "3": "fear", "4": "happiness", "5": "sadness", "6": "surprise",
}


def _dd_lines(archive: zipfile.ZipFile, zip_path: Path, member: str) -> list[str]:
    try:
        data = archive.read(member)
    except KeyError:
        raise CorpusError(f"{zip_path}: missing member {member}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CorpusError(f"{zip_path}:{member}: not UTF-8 ({e.reason} at byte {e.start})") from None
    # Split on "\n" only (not str.splitlines): a stray U+2028 or \x0c inside an utterance must not start a dialog.
    lines = text.split("\n")
    if lines and not lines[-1].strip():
        lines.pop()
    return lines


def _read_dailydialog_raw(folder: Path, split: str) -> list[Dialog]:
    name = _DD_ZIP[split]
    zip_path = folder / f"{name}.zip"
    if not zip_path.is_file():
        raise FileNotFoundError(f"missing DailyDialog archive: {zip_path}")
    with zipfile.ZipFile(zip_path) as archive:
        texts = _dd_lines(archive, zip_path, f"{name}/dialogues_{name}.txt")
        acts = _dd_lines(archive, zip_path, f"{name}/dialogues_act_{name}.txt")
        emotions = _dd_lines(archive, zip_path, f"{name}/dialogues_emotion_{name}.txt")
    for member, labels in (("act", acts), ("emotion", emotions)):
        if len(labels) != len(texts):
            raise CorpusError(
                f"{zip_path}:{name}/dialogues_{member}_{name}.txt:{min(len(labels), len(texts)) + 1}: "
                f"{len(labels)} lines but dialogues_{name}.txt has {len(texts)}"
            )
    dialogs = []
    for i, (line, act_line, emo_line) in enumerate(zip(texts, acts, emotions)):
        lineno = i + 1
        utts = [u.strip() for u in line.split("__eou__")]
        if utts and not utts[-1]:
            utts.pop()  # every utterance ends with __eou__, so the last piece is empty
        act_ids, emo_ids = act_line.split(), emo_line.split()
        for member, ids, table in (("act", act_ids, _DD_ACTS), ("emotion", emo_ids, _DD_EMOTIONS)):
            where = f"{zip_path}:{name}/dialogues_{member}_{name}.txt:{lineno}"
            if len(ids) != len(utts):
                raise CorpusError(f"{where}: {len(ids)} labels for {len(utts)} utterances")
            if bad := [x for x in ids if x not in table]:
                raise CorpusError(f"{where}: unknown {member} label {bad[0]!r}")
        if not utts:
            raise CorpusError(f"{zip_path}:{name}/dialogues_{name}.txt:{lineno}: dialog has no utterances")
        turns = tuple(
            Turn("AB"[j % 2], text, _DD_ACTS[a], _DD_EMOTIONS[e])
            for j, (text, a, e) in enumerate(zip(utts, act_ids, emo_ids))
        )
        dialogs.append(Dialog(f"dailydialog-{name}-{lineno}", turns))
    return dialogs


def _dialog_key(dialog: Dialog) -> str:
    """Case-folded, white-space-collapsed text of all turns: how the release's duplicates are found."""
    return "\x1f".join(" ".join(t.text.casefold().split()) for t in dialog.turns)


def dailydialog_overlap(folder: str | Path) -> dict[str, int]:
    """How the DailyDialog release overlaps itself, and what the train reader drops because of it.

    Keys: "valid_in_train" / "test_in_train": validation / test dialogs whose key occurs in train (the README's
    77 / 106); "train_repeats": train dialogs that repeat an earlier train dialog (603); "dropped_overlap": train
    dialogs dropped because their key occurs in validation or test (every copy); "dropped_repeats": further
    repeated copies dropped within train; "kept": train dialogs the reader returns.
    """
    return _dailydialog_train(Path(folder))[1]


def _dailydialog_train(folder: Path) -> tuple[list[Dialog], dict[str, int]]:
    train = _read_dailydialog_raw(folder, "train")
    train_keys = [_dialog_key(d) for d in train]
    train_set = set(train_keys)
    held_out: set[str] = set()
    counts = {"train_repeats": len(train_keys) - len(train_set)}
    for split in ("valid", "test"):
        keys = [_dialog_key(d) for d in _read_dailydialog_raw(folder, split)]
        counts[f"{split}_in_train"] = sum(k in train_set for k in keys)
        held_out.update(keys)
    counts["dropped_overlap"] = counts["dropped_repeats"] = 0
    seen: set[str] = set()
    kept = []
    for dialog, key in zip(train, train_keys):
        if key in held_out:
            counts["dropped_overlap"] += 1
        elif key in seen:
            counts["dropped_repeats"] += 1
        else:
            seen.add(key)
            kept.append(dialog)
    counts["kept"] = len(kept)
    return kept, counts


def _read_dailydialog(folder: Path, split: str) -> list[Dialog]:
    if not folder.is_dir():
        raise NotADirectoryError(f"expected the DailyDialog folder holding {_DD_ZIP[split]}.zip: {folder}")
    if split != "train":
        return _read_dailydialog_raw(folder, split)
    kept, counts = _dailydialog_train(folder)
    logger.info(
        "dailydialog train: dropped %d dialogs that also occur in validation or test "
        "(%d validation and %d test dialogs are in train) and %d repeated copies within train; %d of %d kept",
        counts["dropped_overlap"], counts["valid_in_train"], counts["test_in_train"], counts["dropped_repeats"],
        len(kept), len(kept) + counts["dropped_overlap"] + counts["dropped_repeats"],
    )
    return kept


# -- jsonl (user-provided dialogs) ---------------------------------------------------------------------------------


def _jsonl_turn(raw: Any, index: int, where: str) -> Turn:
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


def _read_jsonl(file: Path) -> list[Dialog]:
    if file.suffix != ".jsonl":
        raise CorpusError(f"{file}: expected a .jsonl file")
    dialogs = []
    for lineno, obj in _json_lines(file):
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
