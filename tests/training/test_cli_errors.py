"""Every error a user can make on `python -m training` is one line with exit status 2, before any work: a
numeric flag out of its range, flags that would change nothing, files of the wrong kind, devices that are not
there; never a traceback, never exit 0 with a report of nothing (the scaling, compare and synthetic commands'
refusals are tested beside their modules)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from model.bundle import save_bundle
from model.config import preset
from model.cvae import CVAE
from model.tokenizer import Tokenizer
from tests.conftest import synthetic_sentences, write_synthetic_corpus
from training.__main__ import main
from training.cliargs import float_in, int_in


def run(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit status and stderr of the CLI, run in this process (an exception would fail the test)."""
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's usage errors
        rc = e.code if isinstance(e.code, int) else 1  # SystemExit("text") exits with 1
    return rc, capsys.readouterr().err


def refused(args: list[str], capsys: pytest.CaptureFixture[str], *words: str) -> str:
    """Asserts a one-line refusal with exit status 2 naming ``words``; returns the line."""
    rc, err = run(args, capsys)
    lines = [line for line in err.strip().splitlines() if " INFO " not in line]
    assert rc == 2, err[-2000:]
    assert "Traceback" not in err
    last = lines[-1]
    assert last.startswith("error: ") or ": error: " in last, err  # ours, or argparse's usage error
    for w in words:
        assert w in last, last
    return last


def bundle_with_data(out: Path, data: dict) -> Path:
    """A tiny bundle that records ``data`` as the corpus it was trained on."""
    torch.manual_seed(0)
    tok = Tokenizer.train(synthetic_sentences(), vocab_size=64)
    net = CVAE(preset("tiny", vocab_size=tok.vocab_size, max_decode_len=12))
    net.eval()
    save_bundle(out, net, tok, name="tiny", text_style="plain", extra={"data": data})
    return out


@pytest.fixture(scope="module")
def jsonl_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    corpus = write_synthetic_corpus(tmp_path_factory.mktemp("corpus"))
    return bundle_with_data(tmp_path_factory.mktemp("b") / "jsonl", {"corpus": "jsonl", "dir": str(corpus)})


@pytest.fixture(scope="module")
def empty_split(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A corpus whose valid split has no dialog."""
    folder = write_synthetic_corpus(tmp_path_factory.mktemp("empty"))
    (folder / "valid.jsonl").write_text("")
    return folder


def test_ranges_refuse_nan_infinity_and_values_out_of_range():
    import argparse

    parse = float_in(0, 2)
    assert parse("2") == 2.0 and parse("0") == 0.0
    for bad in ("nan", "inf", "-0.1", "2.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)
    with pytest.raises(argparse.ArgumentTypeError, match="above 0"):
        float_in(0, 1, above=True)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="from 1 up"):
        int_in(1, None)("0")


# ---- evaluate ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("-n", "0"), ("-n", "101"), ("--batch-size", "0"), ("--max-contexts", "-1"),
                                         ("--seed", "-1"), ("--seed", str(2**64))])
def test_evaluate_refuses_counts_out_of_range(flag, value, tmp_path, capsys):
    refused(["evaluate", "--bundle", tmp_path, "--out", tmp_path / "e.json", flag, value], capsys, flag)
    assert not (tmp_path / "e.json").exists()


def test_evaluate_with_one_sample_writes_valid_json(jsonl_bundle, tmp_path, capsys):
    out = tmp_path / "e.json"
    rc, err = run(["evaluate", "--bundle", jsonl_bundle, "--split", "valid", "-n", "1", "--max-contexts", "2",
                   "--batch-size", "1", "--out", out], capsys)
    assert rc == 0, err[-2000:]
    assert "RuntimeWarning" not in err

    def no_nan(name: str) -> None:
        raise AssertionError(f"{name} in the metrics")

    res = json.loads(out.read_text(), parse_constant=no_nan)
    assert res["n_samples"] == 1 and res["n_contexts"] == 2 and res["mean_len"] >= 0


def test_evaluate_refuses_a_device_that_is_not_there(tiny_bundle, tmp_path, capsys):
    refused(["evaluate", "--bundle", tiny_bundle, "--out", tmp_path / "e.json", "--device", "tpu"], capsys,
            "unknown device 'tpu'")
    if torch.cuda.is_available():
        refused(["evaluate", "--bundle", tiny_bundle, "--out", tmp_path / "e.json", "--device",
                 f"cuda:{torch.cuda.device_count()}"], capsys, "CUDA device(s) here")
    else:
        refused(["evaluate", "--bundle", tiny_bundle, "--out", tmp_path / "e.json", "--device", "cuda"], capsys,
                "no usable CUDA device")


def test_evaluate_a_mixed_corpus_bundle_needs_both_corpus_and_folder(tmp_path, capsys):
    corpus = write_synthetic_corpus(tmp_path / "c")
    mix = bundle_with_data(tmp_path / "mix", {"corpus": "mix", "mix": [{"corpus": "jsonl", "dir": str(corpus)}]})
    refused(["evaluate", "--bundle", mix, "--out", tmp_path / "e.json", "--set", f"data.dir={corpus}"], capsys,
            "mix of corpora", "--set data.corpus=... and --set data.dir=...")


@pytest.mark.parametrize("item, words", [("foo=bar", "--set takes data.corpus=... or data.dir=..."),
                                         ("data.dir=", "--set takes"),
                                         ("data.corpus=nosuch", "unknown corpus 'nosuch'")])
def test_evaluate_refuses_other_settings(item, words, tiny_bundle, tmp_path, capsys):
    refused(["evaluate", "--bundle", tiny_bundle, "--out", tmp_path / "e.json", "--set", item], capsys, words)


def test_evaluate_refuses_a_split_without_contexts(jsonl_bundle, empty_split, tmp_path, capsys):
    refused(["evaluate", "--bundle", jsonl_bundle, "--split", "valid", "--set", f"data.dir={empty_split}",
             "--out", tmp_path / "e.json"], capsys, "no context")
    assert not (tmp_path / "e.json").exists()


@pytest.mark.parametrize("command", ["evaluate", "quality", "retrieval"])
def test_an_output_file_that_cannot_be_written_is_refused_first(command, tmp_path, capsys):
    (tmp_path / "file").write_text("")
    corpus = [] if command == "evaluate" else ["--corpus", "jsonl"]
    refused([command, "--bundle", tmp_path, *corpus, "--out", tmp_path], capsys, "is a folder")
    refused([command, "--bundle", tmp_path, *corpus, "--out", tmp_path / "file" / "m.json"], capsys,
            "is a file, not a folder")


# ---- quality -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [("--candidates-per-reply", "3"), ("--mmi-weight", "0.5"),
                                         ("--diversity", "1"), ("--coherence-weight", "1"), ("--anti-lm", "probes"),
                                         ("--mmi-weight", "0.2")])  # the default, given: still refused
def test_quality_refuses_reranking_flags_without_reranking(flag, value, jsonl_bundle, tmp_path, capsys):
    corpus = json.loads((jsonl_bundle / "config.json").read_text())["data"]["dir"]
    line = refused(["quality", "--bundle", jsonl_bundle, "--corpus", "jsonl", "--data-dir", corpus, "--split", "valid",
                    "--contexts", "1", "--out", tmp_path / "q.json", "--no-rerank", flag, value], capsys, flag,
                   "--no-rerank")
    assert line.count("--") == 2  # names the one flag given
    assert not (tmp_path / "q.json").exists()


def test_quality_without_reranking_runs_and_with_it_takes_the_defaults(jsonl_bundle, tmp_path, capsys):
    from model import rerank as rr

    corpus = json.loads((jsonl_bundle / "config.json").read_text())["data"]["dir"]
    base = ["quality", "--bundle", jsonl_bundle, "--corpus", "jsonl", "--data-dir", corpus, "--split", "valid",
            "--contexts", "2", "-n", "2"]
    assert run([*base, "--no-rerank", "--out", tmp_path / "plain.json"], capsys)[0] == 0
    assert json.loads((tmp_path / "plain.json").read_text())["rerank"] is False
    assert run([*base, "--mmi-weight", "0.5", "--out", tmp_path / "ranked.json"], capsys)[0] == 0
    res = json.loads((tmp_path / "ranked.json").read_text())
    assert res["mmi_weight"] == 0.5 and res["diversity"] == rr.DEFAULT_DIVERSITY
    assert res["candidates_per_reply"] == rr.DEFAULT_CANDIDATES_PER_REPLY and res["anti_lm"] == "probes"


@pytest.mark.parametrize("command", ["quality", "retrieval"])
def test_a_split_without_contexts_is_refused_not_reported(command, jsonl_bundle, empty_split, tmp_path, capsys):
    refused([command, "--bundle", jsonl_bundle, "--corpus", "jsonl", "--data-dir", empty_split, "--split", "valid",
             "--out", tmp_path / "q.json"], capsys, "no dialog of two turns or more")
    assert not (tmp_path / "q.json").exists()


# ---- lexicon, train ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["0", "-3"])
def test_lexicon_checks_the_count_before_reading_the_corpus(value, jsonl_bundle, capsys):
    before = (jsonl_bundle / "manifest.json").read_bytes()
    refused(["lexicon", "--bundle", jsonl_bundle, "--min-count", value], capsys, "--min-count", "from 1 up")
    assert (jsonl_bundle / "manifest.json").read_bytes() == before


def test_train_refuses_a_run_folder_that_is_a_file(tmp_path, capsys):
    (tmp_path / "run").write_text("")
    refused(["train", "--config", "tiny", "--out", tmp_path / "run"], capsys, "is a file; expected a folder")


# ---- humaneval ---------------------------------------------------------------------------------------------

def samples(path: Path, name: str, contexts: int = 3) -> Path:
    with open(path, "w") as f:
        for i in range(contexts):
            f.write(json.dumps({"id": f"c{i}", "context": [f"turn {i}"], "reference": f"true reply {i}",
                                "replies": [f"{name} reply {i}.{j}" for j in range(5)]}) + "\n")
    return path


@pytest.mark.parametrize("flag, value", [("--replies", "-1"), ("--replies", "0"), ("--replies", "17"),
                                         ("--contexts", "0"), ("--contexts", "-2"), ("--seed", "-1")])
def test_export_refuses_counts_out_of_range(flag, value, tmp_path, capsys):
    a = samples(tmp_path / "a.jsonl", "A")
    refused(["humaneval", "export", f"A={a}", "--out", tmp_path / "s.json", "--key", tmp_path / "k.json",
             flag, value], capsys, flag)
    assert not (tmp_path / "s.json").exists()
