"""Corpus readers -> examples -> batches.

Readers (this part) turn a corpus on disk into `Dialog`s holding the raw corpus text; normalisation
(`model.text.normalize` with `TEXT_STYLE[corpus]`) is applied later by the pipeline. Readers never unpickle and
never extract archives to disk. Corpus formats are described in `../shared/data/README.md`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import zipfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("training.data")

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
        return _read_swda(_split_file(path, split, ".jsonl"))
    if corpus == "dailydialog":
        return _read_dailydialog(path, split)
    if corpus == "chitchat":
        return _read_chitchat(path, split)
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


# -- chitchat (BYU Chit-Chat, read from the published wheel) ------------------------------------------------------

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
        key = _dialog_key(dialog)
        if key in seen:
            counts["repeats"] += 1
            continue
        seen.add(key)
        splits[chitchat_split_of(conv_id)].append(dialog)
    for s in SPLITS:
        counts[s] = len(splits[s])
    return splits, counts


_CHITCHAT_CACHE: dict[tuple[str, float], tuple[dict[str, list[Dialog]], dict[str, int]]] = {}


def _read_chitchat(path: Path, split: str) -> list[Dialog]:
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


# -- mixing corpora ------------------------------------------------------------------------------------------------


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
