"""DailyDialog (Li et al. 2017), the original release: three zips of one-dialog-a-line text with act and emotion
labels per utterance. The train split drops the dialogs the release repeats or shares with validation or test."""

from __future__ import annotations

import logging
import zipfile
from pathlib import Path

from .core import CorpusError, Dialog, Turn, dialog_key

logger = logging.getLogger("training.data")

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
    train_keys = [dialog_key(d) for d in train]
    train_set = set(train_keys)
    held_out: set[str] = set()
    counts = {"train_repeats": len(train_keys) - len(train_set)}
    for split in ("valid", "test"):
        keys = [dialog_key(d) for d in _read_dailydialog_raw(folder, split)]
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


def read_dailydialog(folder: Path, split: str) -> list[Dialog]:
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
