"""Quality metrics (training.quality) and the blind human-evaluation kit (training.humaneval)."""
import json

import pytest

from training.humaneval import HumanEvalError, export, fleiss_kappa, report, score
from training.quality import generic_replies, invented_words, is_real_word, measure

import numpy as np


@pytest.mark.parametrize("word, real", [
    ("hello", True), ("don't", True), ("lol", True), ("haha", True), ("42", True), ("5pm", True),
    ("hiiii", True), ("soooo", True), ("sarah", True),
    ("surching", False), ("spleck", False), ("moszzzzzzzan", False), ("obescorickers", False),
])
def test_evaluation_lexicon(word, real):
    assert is_real_word(word) is real


def test_measure_counts_invented_generic_cutoff_and_distinct():
    items = [
        {"replies": ["Yeah.", "I like the surching blue one."], "reference": "I like the blue one.",
         "finish": ["eos", "length"]},
        {"replies": ["Thank you.", "Thank you."], "reference": "You are welcome.", "finish": ["eos", "eos"]},
    ]
    generic = generic_replies(["yeah", "Yeah!", "thank you", "ok", "Thank you."], top=2)
    assert generic == {"yeah", "thank you"}
    res = measure(items, generic)
    assert res["replies"] == 4
    assert res["invented_reply_rate"] == 0.25 and res["invented_words"] == {"surching": 1}
    assert res["generic_reply_rate"] == 0.75
    assert res["cutoff_rate"] == 0.25
    assert res["distinct1_intra"] < 1.0 and 0 < res["bleu1_recall"] <= 1.0
    assert invented_words("Spleck and hiii") == ["spleck"]


def _samples(path, name, contexts):
    with open(path, "w") as f:
        for i, ctx in enumerate(contexts):
            f.write(json.dumps({"id": f"c{i}", "context": ctx, "reference": f"true reply {i}",
                                "replies": [f"{name} reply {i}.{j}" for j in range(3)] + ["shared reply"]}) + "\n")
    return path


def test_export_then_score_round_trip(tmp_path):
    contexts = [["hi"], ["how are you?"], ["what now?"]]
    a = _samples(tmp_path / "a.jsonl", "A", contexts)
    b = _samples(tmp_path / "b.jsonl", "B", contexts)
    key = export([f"A={a}", f"B={b}"], tmp_path / "sheet.json", tmp_path / "keys" / "key.json", replies=4)
    sheet = json.loads((tmp_path / "sheet.json").read_text())
    assert len(sheet) == 3
    # 3 A + 3 B + one shared text shown once + the control
    assert all(len(it["candidates"]) == 8 for it in sheet)
    assert "A" not in json.dumps(sheet).replace("A reply", "")  # the sheet names no system
    sources = key["items"][0]["sources"]
    shared = next(s for s in sources if len(s) == 2)
    assert sorted(x[0] for x in shared) == ["A", "B"]

    # three raters: A's replies sensible+specific, B's not sensible, the shared one sensible but generic,
    # the control sensible and specific; rater 3 disagrees on A (majority still holds)
    def ratings(rater):
        out = []
        for it, k in zip(sheet, key["items"]):
            sens, spec = [], []
            for src in k["sources"]:
                systems = {s for s, _ in src}
                if systems == {"A"}:
                    sens.append(0 if rater == 3 else 1), spec.append(0 if rater == 3 else 1)
                elif systems == {"B"}:
                    sens.append(0), spec.append(0)
                elif systems == {"A", "B"}:
                    sens.append(1), spec.append(0)
                else:
                    sens.append(1), spec.append(1)
            out.append({"item": it["item"], "sensible": sens, "specific": spec})
        p = tmp_path / f"r{rater}.json"
        p.write_text(json.dumps(out))
        return p

    res = score(tmp_path / "sheet.json", tmp_path / "keys" / "key.json", [ratings(r) for r in (1, 2, 3)])
    A, B, C = res["systems"]["A"], res["systems"]["B"], res["systems"]["control"]
    assert A["sensible"] == 1.0 and A["specific"] == pytest.approx(0.75) and A["ssa"] == pytest.approx(0.875)
    assert B["sensible"] == pytest.approx(0.25) and B["specific"] == 0.0
    assert C["ssa"] == 1.0 and not res["void"]
    assert res["preference"] == [{"a": "A", "b": "B", "a_better": 3, "tie": 0, "b_better": 0}]
    assert 0 < res["agreement"]["pairwise_agreement_sensible"] < 1
    assert "| A |" in report(res)


def test_score_rejects_incomplete_ratings(tmp_path):
    a = _samples(tmp_path / "a.jsonl", "A", [["hi"]])
    export([f"A={a}"], tmp_path / "s.json", tmp_path / "k.json")
    (tmp_path / "r.json").write_text(json.dumps([{"item": 0, "sensible": [1], "specific": [0]}]))
    with pytest.raises(HumanEvalError, match="needs 5 sensible"):
        score(tmp_path / "s.json", tmp_path / "k.json", [tmp_path / "r.json"])
    with pytest.raises(HumanEvalError, match="NAME=SAMPLES"):
        export([str(a)], tmp_path / "s.json", tmp_path / "k.json")


def test_fleiss_kappa_perfect_and_chance():
    assert fleiss_kappa(np.array([[1, 1, 1], [0, 0, 0], [1, 1, 1]])) == 1.0
    assert fleiss_kappa(np.array([[1, 0], [0, 1], [1, 0], [0, 1]])) < 0


def test_quality_cli_end_to_end_on_a_tiny_bundle(tmp_path, synthetic_corpus):
    from tests.conftest import build_tiny_bundle
    from training.__main__ import main

    bundle = build_tiny_bundle(tmp_path / "b")
    out, samples = tmp_path / "q.json", tmp_path / "q.jsonl"
    rc = main(["quality", "--bundle", str(bundle), "--corpus", "jsonl", "--data-dir", str(synthetic_corpus),
               "--split", "valid", "--contexts", "6", "-n", "3", "--out", str(out), "--samples", str(samples)])
    assert rc == 0
    res = json.loads(out.read_text())
    from model.rerank import DEFAULT_CANDIDATES_PER_REPLY

    assert res["contexts"] == 6 and res["rerank"] is True
    assert res["candidates_per_reply"] == DEFAULT_CANDIDATES_PER_REPLY
    assert "generic_reply_rate" not in res  # the tiny bundle records no training data
    lines = [json.loads(l) for l in samples.read_text().splitlines()]
    assert len(lines) == 6 and all(1 <= len(l["replies"]) <= 3 and l["reference"] for l in lines)
    assert all(len(set(l["replies"])) == len(l["replies"]) for l in lines)  # no repeats among a context's replies


@pytest.fixture
def sheet_and_key(tmp_path):
    a = _samples(tmp_path / "a.jsonl", "A", [["hi"], ["how are you?"], ["what now?"]])
    b = _samples(tmp_path / "b.jsonl", "B", [["hi"], ["how are you?"], ["what now?"]])
    export([f"A={a}", f"B={b}"], tmp_path / "sheet.json", tmp_path / "key.json", replies=2)
    return tmp_path / "sheet.json", tmp_path / "key.json"


def _ratings(path, sheet, rating=1):
    items = json.loads(sheet.read_text())
    path.write_text(json.dumps([{"item": it["item"], "sensible": [rating] * len(it["candidates"]),
                                 "specific": [rating] * len(it["candidates"])} for it in items]))
    return path


def test_export_takes_the_replies_asked_for_and_refuses_none(sheet_and_key, tmp_path):
    sheet, _ = sheet_and_key
    assert all(len(it["candidates"]) == 2 + 2 + 1 for it in json.loads(sheet.read_text()))  # A's, B's, the control
    a = _samples(tmp_path / "c.jsonl", "C", [["hi"]])
    for kwargs in ({"replies": 0}, {"replies": -1}, {"contexts": 0}):  # [:-1] took all replies but the last
        with pytest.raises(HumanEvalError, match="must be at least 1"):
            export([f"C={a}"], tmp_path / "s2.json", tmp_path / "k2.json", **kwargs)
    assert not (tmp_path / "s2.json").exists()


def test_score_names_a_sheet_and_key_swapped(sheet_and_key, tmp_path):
    sheet, key = sheet_and_key
    r = _ratings(tmp_path / "r.json", sheet)
    with pytest.raises(HumanEvalError, match=r"key.json: not a judging sheet .* is it the key\?"):
        score(key, sheet, [r])  # an AttributeError traceback before
    with pytest.raises(HumanEvalError, match=r"sheet.json: not a key .* is it the sheet\?"):
        score(sheet, sheet, [r])


def test_score_refuses_a_key_that_does_not_fit_the_sheet(sheet_and_key, tmp_path):
    sheet, key = sheet_and_key
    r = _ratings(tmp_path / "r.json", sheet)
    doc = json.loads(key.read_text())
    doc["items"][1]["sources"] = doc["items"][1]["sources"][:-1]  # one candidate short
    (tmp_path / "k1.json").write_text(json.dumps(doc))
    with pytest.raises(HumanEvalError, match="item 1 does not match the sheet"):
        score(sheet, tmp_path / "k1.json", [r])
    doc = json.loads(key.read_text())
    doc["items"][0]["sources"][0] = [["nobody", 0]]  # a system the key does not list
    (tmp_path / "k2.json").write_text(json.dumps(doc))
    with pytest.raises(HumanEvalError, match="item 0 does not match the sheet"):
        score(sheet, tmp_path / "k2.json", [r])
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(HumanEvalError, match="not a judging sheet"):
        score(tmp_path / "empty.json", key, [r])


def test_one_rater_gives_no_agreement_and_no_nan(sheet_and_key, tmp_path):
    sheet, key = sheet_and_key
    r = _ratings(tmp_path / "r.json", sheet)
    with pytest.raises(HumanEvalError, match="given twice"):  # one rater counted twice agrees with themself
        score(sheet, key, [r, tmp_path / "." / "r.json"])
    res = score(sheet, key, [r])

    def no_nan(name):
        raise AssertionError(f"{name} in the scores")

    assert json.loads(json.dumps(res), parse_constant=no_nan)["agreement"]["fleiss_kappa_sensible"] is None
    assert res["agreement"]["pairwise_agreement_sensible"] is None
    assert "no agreement to measure with one rater" in report(res)
