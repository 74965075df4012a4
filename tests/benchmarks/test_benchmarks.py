"""The benchmarks' own logic (no timings here): FLOP counts, the padded baseline's losses, latency summaries
(their percentile is harness.stats', tested in tests/harness)."""
from __future__ import annotations

import pytest
import torch

from benchmarks.common import table
from benchmarks.serve import FALLBACK_CONTEXTS, load_contexts, summarize
from benchmarks.train_throughput import batch_flops, gru_flops, padded_forward
from model.config import BOS_ID, EOS_ID, preset
from model.cvae import CVAE
from model.inputs import collate


def tiny_batch(cfg):
    contexts = [[[BOS_ID, 5, 6, EOS_ID], [BOS_ID, 7, EOS_ID]], [[BOS_ID, 8, 9, 10, EOS_ID]]]
    flags = [[0, 1], [0]]
    responses = [[BOS_ID, 11, 12, EOS_ID], [BOS_ID, 13, 14, 15, 16, EOS_ID]]
    acts = [1, 2] if cfg.kgcvae else None
    return collate(contexts, flags, responses, acts=acts)


def test_gru_flops():
    assert gru_flops(3, 2) == 2 * 3 * 2 * (3 + 2)


def test_batch_flops_counts_real_tokens_only():
    cfg = preset("tiny")
    batch = tiny_batch(cfg)
    f = batch_flops(cfg, batch)
    # 4 + 3 + 5 context tokens and 4 + 6 response tokens through both directions of the utterance encoder
    assert f["utt_encoder"] == 2 * gru_flops(cfg.embed_dim, cfg.utt_hidden) * (12 + 10)
    assert f["ctx_encoder"] == 3 * gru_flops(cfg.utt_dim + 2, cfg.ctx_hidden)
    assert f["decoder_gru"] == 8 * gru_flops(cfg.embed_dim, cfg.dec_hidden)  # (4 - 1) + (6 - 1) steps
    assert f["vocab_projection"] == 8 * 2 * cfg.dec_hidden * cfg.vocab_size


@pytest.mark.parametrize("kgcvae", [False, True])
def test_padded_baseline_computes_the_models_losses(kgcvae):
    cfg = preset("tiny", kgcvae=kgcvae, n_acts=4 if kgcvae else 0)
    torch.manual_seed(0)
    model = CVAE(cfg).train()
    batch = tiny_batch(cfg)
    torch.manual_seed(1)
    ref = model(batch)
    torch.manual_seed(1)
    out = padded_forward(model, batch)
    for k in ("rc_loss", "kl", "bow_loss", "act_loss"):
        assert torch.allclose(ref[k], out[k], rtol=1e-5, atol=1e-6), k
    assert int(out["n_tokens"]) == int(ref["n_tokens"])


def test_summary():
    xs = [0.001 * i for i in range(1, 101)]
    row = summarize("s", 4, xs, replies=500, errors=0, wall=2.0)
    assert row["req_per_s"] == 50 and row["replies_per_s"] == 250 and row["p50_ms"] == pytest.approx(50.5)
    assert table([row], ["setup", "replies_per_s"]).splitlines()[2] == "| s | 250 |"


def test_contexts_fall_back_without_data(tmp_path):
    assert load_contexts(str(tmp_path / "missing")) == FALLBACK_CONTEXTS


def test_decode_step_cli_counts_one_host_read_per_step(tmp_path):
    from benchmarks.decode_step import main
    from tests.conftest import build_tiny_bundle

    out = main(["--bundle", str(build_tiny_bundle(tmp_path / "tiny")), "--rows", "1,3", "--repeats", "1",
                "--json", str(tmp_path / "d.json")])
    assert [(r["rows"], r["strategy"], r["lexicon"]) for r in out["results"]] == [
        (rows, s, lex) for rows in (1, 3) for s, lex in (("greedy", True), ("greedy", False), ("sample", True))]
    assert all(r["host_reads_per_step"] == 1 and r["steps"] >= 1 for r in out["results"])
    assert (tmp_path / "d.json").read_text().startswith("{")


def test_loop_stall_cli_runs_maximum_size_requests(tmp_path):
    from benchmarks.loop_stall import main
    from tests.conftest import build_tiny_bundle

    out = main(["--bundle", str(build_tiny_bundle(tmp_path / "tiny")), "--requests", "1,2", "--repeats", "1"])
    assert [r["requests"] for r in out["results"]] == [1, 2]
    assert all(r["body_bytes"] > 20_000 and r["loop_cpu_ms"] > 0 for r in out["results"])
