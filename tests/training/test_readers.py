import json
import logging
import re
import shutil
import tempfile
import zipfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from model.text import normalize
from training.data import (
    CORPORA,
    TEXT_STYLE,
    CorpusError,
    Dialog,
    Turn,
    dailydialog_overlap,
    read_corpus,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def test_every_corpus_has_a_text_style():
    assert set(TEXT_STYLE) == set(CORPORA)


def test_unknown_corpus_or_split_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown corpus"):
        read_corpus("reddit", tmp_path, "train")
    with pytest.raises(ValueError, match="unknown split"):
        read_corpus("jsonl", tmp_path, "dev")


@pytest.mark.parametrize("corpus", CORPORA)
def test_missing_folder_or_file_is_a_clear_error(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="not found"):
        read_corpus(corpus, tmp_path / "nowhere", "train")
    with pytest.raises(FileNotFoundError, match=r"missing .*(train\.jsonl|train\.zip|chitchat data)"):
        read_corpus(corpus, tmp_path, "train")


# -- swda ---------------------------------------------------------------------------------------------------------


def test_swda_reader(tmp_path):
    shutil.copy(FIXTURES / "swda_tiny.jsonl", tmp_path / "valid.jsonl")
    first, second = read_corpus("swda", tmp_path, "valid")

    assert first.topic == "MUSIC"
    assert first.speakers["A"] == {"dialect": "SOUTH MIDLAND", "age": 47, "education": "2", "sex": "MALE"}
    assert first.speakers["B"]["sex"] == "FEMALE"
    assert first.turns[1] == Turn("B", "i don't really have a favorite type", "statement-non-opinion")
    # Consecutive turns of one speaker stay as they are.
    assert [t.speaker for t in first.turns] == ["A", "B", "A", "A", "B"]
    assert [t.text for t in first.turns[2:4]] == ["uh-huh", "uh-huh"]
    assert all(t.emotion is None for t in first.turns)
    assert second.id.endswith("4321") and second.topic == "PETS" and len(second.turns) == 2
    assert first.id != second.id


def test_swda_reader_names_file_and_line_of_a_bad_dialog(tmp_path):
    good = (FIXTURES / "swda_tiny.jsonl").read_text().splitlines()[0]
    (tmp_path / "test.jsonl").write_text(good + "\n" + json.dumps({"topic": "x"}) + "\n")
    with pytest.raises(CorpusError, match=r"test\.jsonl:2: "):
        read_corpus("swda", tmp_path, "test")


# -- dailydialog ---------------------------------------------------------------------------------------------------


def _dd_zip(folder: Path, name: str, dialogs: list[tuple[list[str], str, str]], emotions: str | None = None) -> None:
    """Write `<folder>/<name>.zip` in the release's layout from (utterances, acts, emotions) triples."""
    with zipfile.ZipFile(folder / f"{name}.zip", "w") as z:
        z.writestr(f"{name}/", "")
        z.writestr(f"{name}/dialogues_{name}.txt", "".join(" __eou__ ".join(u) + " __eou__\n" for u, _, _ in dialogs))
        z.writestr(f"{name}/dialogues_act_{name}.txt", "".join(a + " \n" for _, a, _ in dialogs))
        if emotions is None:
            emotions = "".join(e + " \n" for _, _, e in dialogs)
        z.writestr(f"{name}/dialogues_emotion_{name}.txt", emotions)


HELLO = (["Hi , Tom !", "Hello . How ' s it going ?", "Fine ."], "1 2 1", "4 0 0")
BYE = (["See you .", "Bye !"], "3 4", "0 5")
LUNCH = (["Lunch ?", "Sure ."], "2 4", "0 4")


@pytest.fixture
def dd_dir(tmp_path):
    hello_cased = (["hi ,  TOM !", "Hello . how ' s it going ?", "fine ."], "1 2 1", "4 0 0")
    _dd_zip(tmp_path, "train", [HELLO, LUNCH, BYE, LUNCH, LUNCH, hello_cased])
    _dd_zip(tmp_path, "validation", [BYE])
    _dd_zip(tmp_path, "test", [HELLO, (["What ?", "Nothing ."], "2 1", "6 0")])
    return tmp_path


def test_dailydialog_reader_labels_and_speakers(dd_dir):
    valid = read_corpus("dailydialog", dd_dir, "valid")
    test = read_corpus("dailydialog", dd_dir, "test")
    assert len(valid) == 1 and len(test) == 2
    assert test[0].turns == (
        Turn("A", "Hi , Tom !", "inform", "happiness"),
        Turn("B", "Hello . How ' s it going ?", "question", "no_emotion"),
        Turn("A", "Fine .", "inform", "no_emotion"),
    )
    assert valid[0].turns[1] == Turn("B", "Bye !", "commissive", "sadness")
    assert test[1].turns[0].emotion == "surprise"


def test_dailydialog_train_drops_eval_overlap_and_repeats(dd_dir, caplog):
    with caplog.at_level(logging.INFO, logger="training.data"):
        train = read_corpus("dailydialog", dd_dir, "train")
    # HELLO (twice, once in another case/spacing) is in test, BYE in validation; LUNCH is kept once.
    assert [[t.text for t in d.turns] for d in train] == [LUNCH[0]]
    assert dailydialog_overlap(dd_dir) == {
        "train_repeats": 3,
        "valid_in_train": 1,
        "test_in_train": 1,
        "dropped_overlap": 3,
        "dropped_repeats": 2,
        "kept": 1,
    }
    assert re.search(r"dropped 3 dialogs .* 2 repeated copies", caplog.text)


def test_dailydialog_label_count_mismatch_names_file_and_line(tmp_path):
    _dd_zip(tmp_path, "test", [HELLO, (["One .", "Two ."], "1", "0 0")])
    with pytest.raises(CorpusError, match=r"test\.zip:test/dialogues_act_test\.txt:2: 1 labels for 2 utterances"):
        read_corpus("dailydialog", tmp_path, "test")


def test_dailydialog_line_count_mismatch_is_an_error(tmp_path):
    _dd_zip(tmp_path, "test", [HELLO, BYE], emotions="4 0 0\n")  # one line short
    with pytest.raises(CorpusError, match=r"dialogues_emotion_test\.txt:2: 1 lines"):
        read_corpus("dailydialog", tmp_path, "test")


def test_dailydialog_unknown_label_is_an_error(tmp_path):
    _dd_zip(tmp_path, "validation", [(["Hi ."], "9", "0")])
    with pytest.raises(CorpusError, match=r"dialogues_act_validation\.txt:1: unknown act label '9'"):
        read_corpus("dailydialog", tmp_path, "valid")


# -- jsonl ---------------------------------------------------------------------------------------------------------


def test_jsonl_reader_single_file_any_split():
    for split in ("train", "valid", "test"):
        greet, help_, single = read_corpus("jsonl", FIXTURES / "dialogs_good.jsonl", split)
        assert greet == Dialog(
            "greet",
            (Turn("A", "Hi there!"), Turn("B", "Hello, how are you?"), Turn("A", "Fine, thanks.")),
            topic="greetings",
        )
        assert help_.turns == (Turn("user", "Can you help me?", "question"), Turn("bot", "Sure."))
        assert help_.id == "dialogs_good-3"  # blank line 2 skipped; the default id uses the line number
        assert single.id == "7" and single.topic is None


def test_jsonl_reader_folder_of_splits(tmp_path):
    (tmp_path / "valid.jsonl").write_text('{"turns": ["a", "b"]}\n')
    assert len(read_corpus("jsonl", tmp_path, "valid")) == 1
    with pytest.raises(FileNotFoundError, match=r"missing corpus file: .*test\.jsonl"):
        read_corpus("jsonl", tmp_path, "test")


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ('{"turns": ["a", "b"', "malformed JSON"),
        ('["a", "b"]', "expected an object"),
        ('{"id": "x"}', "'turns' must be a non-empty list"),
        ('{"turns": []}', "'turns' must be a non-empty list"),
        ('{"turns": "hello"}', "'turns' must be a non-empty list"),
        ('{"turns": ["a", 3]}', "turn 1: expected a string or an object"),
        ('{"turns": ["a", "   "]}', "turn 1: empty text"),
        ('{"turns": [{"text": "hi"}]}', "turn 0: 'speaker' must be a non-empty string"),
        ('{"turns": [{"speaker": "A", "text": ["hi"]}]}', "turn 0: 'text' must be a string"),
        ('{"turns": [{"speaker": "A", "text": "hi", "act": 1}]}', "turn 0: 'act' must be a string"),
        ('{"turns": ["a"], "id": [1]}', "'id' must be a string or an integer"),
        ('{"turns": ["a"], "topic": 5}', "'topic' must be a string"),
    ],
)
def test_jsonl_reader_errors_name_file_and_line(tmp_path, line, problem):
    file = tmp_path / "bad.jsonl"
    file.write_text('{"turns": ["fine"]}\n\n' + line + "\n")
    with pytest.raises(CorpusError, match=re.escape(f"{file}:3: {problem}")):
        read_corpus("jsonl", file, "train")


def test_jsonl_reader_rejects_non_utf8(tmp_path):
    file = tmp_path / "latin1.jsonl"
    file.write_bytes('{"turns": ["café"]}\n'.encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.jsonl:1: not UTF-8"):
        read_corpus("jsonl", file, "train")


_TURN = st.one_of(
    st.text(min_size=1),
    st.fixed_dictionaries({"speaker": st.text(min_size=1), "text": st.text(min_size=1)}),
)


@settings(max_examples=60, deadline=None)
@given(turns=st.lists(_TURN, min_size=1, max_size=4))
def test_jsonl_reader_arbitrary_unicode_turns(turns):
    with tempfile.TemporaryDirectory() as d:
        file = Path(d) / "dialogs.jsonl"
        file.write_text(json.dumps({"turns": turns}) + "\n", encoding="utf-8")
        try:
            (dialog,) = read_corpus("jsonl", file, "train")
        except CorpusError as e:  # only blank text or speakers may be refused
            assert re.search(r"dialogs\.jsonl:1: turn \d+: (empty text|'speaker')", str(e))
            return
    assert [t.text for t in dialog.turns] == [t if isinstance(t, str) else t["text"] for t in turns]
    for turn in dialog.turns:
        normalize(turn.text, TEXT_STYLE["jsonl"])


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3)
    | st.dictionaries(st.sampled_from(["turns", "speaker", "text", "act", "id", "topic"]), inner, max_size=4),
    max_leaves=8,
)
_LINE = st.one_of(st.text().map(str.encode), st.binary(), _JSON.map(lambda v: json.dumps(v).encode()))


@settings(max_examples=150, deadline=None)
@given(lines=st.lists(_LINE, min_size=1, max_size=3))
def test_jsonl_reader_garbage_gives_corpus_error(lines):
    with tempfile.TemporaryDirectory() as d:
        file = Path(d) / "garbage.jsonl"
        file.write_bytes(b"\n".join(lines))
        try:
            dialogs = read_corpus("jsonl", file, "train")
        except CorpusError as e:
            assert re.match(rf"{re.escape(str(file))}:\d+: ", str(e))
        else:  # hypothesis may write a valid dialog, or only blank lines
            assert all(isinstance(d, Dialog) and d.turns for d in dialogs)


# -- the real corpora (../shared/data) -----------------------------------------------------------------------------


def _shared(name: str) -> Path:
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"../shared/data not found: {path} is absent")
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    ("split", "dialogs", "turns"), [("valid", 60, 5225), ("test", 62, 5543), ("train", 1099, 93533)]
)
def test_real_swda_counts(split, dialogs, turns):
    data = read_corpus("swda", _shared("swda"), split)
    assert (len(data), sum(len(d.turns) for d in data)) == (dialogs, turns)
    assert len({d.id for d in data}) == dialogs
    assert all(set(d.speakers) <= {"A", "B"} and isinstance(d.speakers["A"]["age"], int) for d in data)
    meta = [v for d in data for m in d.speakers.values() for v in m.values() if isinstance(v, str)]
    assert meta and not any(v != v.strip().strip('"') for v in meta)


@pytest.mark.slow
def test_real_swda_text_is_already_normal():
    data = read_corpus("swda", _shared("swda"), "valid")
    assert all(normalize(t.text, "swda") == t.text for d in data for t in d.turns)


@pytest.mark.slow
@pytest.mark.parametrize(("split", "dialogs", "turns"), [("valid", 1000, 8069), ("test", 1000, 7740)])
def test_real_dailydialog_counts(split, dialogs, turns):
    data = read_corpus("dailydialog", _shared("dailydialog"), split)
    assert (len(data), sum(len(d.turns) for d in data)) == (dialogs, turns)


@pytest.mark.slow
def test_real_dailydialog_train_overlap_removed(caplog):
    folder = _shared("dailydialog")
    with caplog.at_level(logging.INFO, logger="training.data"):
        train = read_corpus("dailydialog", folder, "train")
    counts = dailydialog_overlap(folder)
    # The README's figures, counted from the validation/test side and within train.
    assert (counts["valid_in_train"], counts["test_in_train"], counts["train_repeats"]) == (77, 106, 603)
    assert counts["dropped_overlap"] >= 77 + 106 - 1  # a dialog may be in both splits; copies in train count too
    assert len(train) == counts["kept"] == 11118 - counts["dropped_overlap"] - counts["dropped_repeats"] < 11118
    assert f"dropped {counts['dropped_overlap']} dialogs" in caplog.text


@pytest.mark.slow
def test_real_dailydialog_normalises_to_written_form():
    texts = [t.text for d in read_corpus("dailydialog", _shared("dailydialog"), "test") for t in d.turns]
    out = [normalize(t, "dailydialog") for t in texts]
    for spaced in (" ,", " .", " ?", " !", " ' s", "’", "$ 5", "( "):
        assert not any(spaced in o for o in out), spaced
    assert all(normalize(o, "dailydialog") == o for o in out)
