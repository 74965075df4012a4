"""The chitchat reader (BYU Chit-Chat, read from its wheel in place) and mixing corpora."""
import json
import zipfile

import pytest

from tests.conftest import shared_data
from training.config import ConfigError, load_config
from training.data import (CHITCHAT_MEMBER, CHITCHAT_MIN_TURNS, CorpusError, Dialog, Turn,
                           chitchat_dialogs, chitchat_split_of, mix_style, read_corpus, read_reserved_ids,
                           read_sources, weighted)


def _conv(turns, a="u1", b="u2"):
    return {"messages": [[{"text": t, "timestamp": "", "sender": (a, b)[i % 2]} for t in ts]
                         for i, ts in enumerate(turns)], "ratings": {}, "start": "", "prompt": ""}


def write_wheel(folder, convs, reserved=()):
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / "chitchat_dataset-0.9.0-py3-none-any.whl", "w") as z:
        z.writestr(CHITCHAT_MEMBER, json.dumps(convs))
    (folder / "reserved_ids.txt").write_text("".join(r + "\n" for r in reserved))
    return folder


@pytest.fixture
def wheel(tmp_path):
    convs = {f"id-{i:03d}": _conv([[f"hello {i}"], [f"hi there {i}", "how are you"], ["fine"], ["good"]])
             for i in range(60)}
    convs["stub"] = _conv([["hello?"]])
    convs["short"] = _conv([["hey"], ["hi"], ["bye"]])
    convs["id-000-copy"] = convs["id-000"]
    convs["gap"] = _conv([["a"], [""], ["b"], ["c"], ["d"], ["e"]])  # an empty turn joins its neighbours
    return write_wheel(tmp_path / "chitchat", convs, reserved=["id-001", "id-002", "id-003"])


def test_reserved_ids_stubs_and_repeats_are_dropped_from_every_split(wheel):
    splits, counts = chitchat_dialogs(wheel)
    ids = {d.id for s in splits.values() for d in s}
    assert not ids & {"chitchat-id-001", "chitchat-id-002", "chitchat-id-003"}
    assert counts["reserved"] == 3
    assert counts["stubs"] == 2  # "stub" (1 turn) and "short" (3 turns)
    assert counts["repeats"] == 1  # id-000-copy (ids in sorted order: id-000 comes first)
    assert "chitchat-id-000" in ids and "chitchat-id-000-copy" not in ids
    assert sum(counts[s] for s in ("train", "valid", "test")) == 60 - 3 + 1 - 1 + 1
    for split in ("train", "valid", "test"):
        assert [d.id for d in read_corpus("chitchat", wheel, split)] == [d.id for d in splits[split]]


def test_turns_join_messages_and_alternate(wheel):
    dialogs = {d.id: d for s in chitchat_dialogs(wheel)[0].values() for d in s}
    d = dialogs["chitchat-id-010"]
    assert d.turns[1] == Turn("B", "hi there 10 how are you")
    assert [t.speaker for t in d.turns] == ["A", "B", "A", "B"]
    gap = dialogs["chitchat-gap"]  # "a", "", "b": the empty turn goes and "a b" is one turn of one sender
    assert [t.text for t in gap.turns] == ["a b", "c", "d", "e"]
    assert [t.speaker for t in gap.turns] == ["A", "B", "A", "B"]


def test_split_is_a_pure_function_of_the_id():
    assert chitchat_split_of("abc") == chitchat_split_of("abc")
    got = [chitchat_split_of(f"conv-{i}") for i in range(4000)]
    assert 0.85 < got.count("train") / 4000 < 0.95
    assert got.count("valid") > 100 and got.count("test") > 100


def test_bad_wheel_is_a_clear_error(tmp_path):
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "chitchat_dataset-0.9.0-py3-none-any.whl").write_text("not a zip")
    with pytest.raises(CorpusError, match="not a wheel"):
        read_corpus("chitchat", tmp_path / "c", "train")
    with pytest.raises(FileNotFoundError, match="missing chitchat data"):
        read_corpus("chitchat", tmp_path, "train")


def test_real_corpus_holds_no_reserved_id():
    folder = shared_data("chitchat")
    reserved = read_reserved_ids(folder / "reserved_ids.txt")
    assert len(reserved) == 190
    splits, counts = chitchat_dialogs(folder)
    seen = {d.id.removeprefix("chitchat-") for s in splits.values() for d in s}
    assert not seen & reserved
    assert counts["reserved"] == 190 and counts["conversations"] == 7168
    assert all(len(d.turns) >= CHITCHAT_MIN_TURNS for s in splits.values() for d in s)


def test_weighted_repeats_and_subsamples_deterministically():
    dialogs = [Dialog(f"d{i}", (Turn("A", "x"),)) for i in range(200)]
    assert len(weighted(dialogs, 2.0)) == 400
    half = weighted(dialogs, 0.5)
    assert 70 < len(half) < 130 and half == weighted(dialogs, 0.5)
    assert len(weighted(dialogs, 1.5)) == 200 + len(half)


def test_mix_config_reads_every_source_in_its_own_style(tmp_path, synthetic_corpus):
    mix = [{"corpus": "jsonl", "dir": str(synthetic_corpus), "weight": 2.0},
           {"corpus": "jsonl", "dir": str(synthetic_corpus)}]
    cfg = load_config(None, ["data.corpus=mix", f"data.mix={json.dumps(mix).replace(':', '=')}"])
    assert [s.weight for s in cfg.data.sources] == [2.0, 1.0]
    assert cfg.data.style == "plain" and mix_style(["chitchat", "dailydialog"]) == "chat"
    train = read_sources(cfg.data.sources, "train")
    one = read_corpus("jsonl", synthetic_corpus, "train")
    assert len(train) == 3 * len(one)
    assert len(read_sources(cfg.data.sources, "valid")) == 2 * len(read_corpus("jsonl", synthetic_corpus, "valid"))


@pytest.mark.parametrize("override, message", [
    (["data.corpus=mix"], "needs data.mix"),
    (['data.mix=[{corpus="jsonl", dir="x"}]'], "only read with corpus"),
    (["data.corpus=mix", 'data.mix=[{corpus="reddit", dir="x"}]'], r"data.mix\[0\].corpus"),
    (["data.corpus=mix", 'data.mix=[{corpus="jsonl", dir="x", weight=0}]'], "weight"),
    (["data.corpus=mix", 'data.mix=[{corpus="jsonl", dir="x", share=1}]'], "unknown key"),
    (["data.corpus=reddit"], "corpus must be one of"),
])
def test_bad_mix_configs_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, override)
