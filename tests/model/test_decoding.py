"""The decode loop (model.decoding.decode) against a plain reference, and what it asks of the device per step."""
from __future__ import annotations

import pytest
import torch

from harness.probes import HostReads
from model.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, preset
from model.cvae import CVAE
from model.decoding import decode, filter_logits, latent_noise, sample_from, sampling_uniforms

BANNED = (PAD_ID, UNK_ID, BOS_ID)


def tiny(seed: int = 0) -> tuple[CVAE, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = CVAE(preset("tiny", vocab_size=64, max_decode_len=12)).eval()
    g = torch.Generator().manual_seed(seed + 1)
    cond = torch.randn(6, model.cfg.cond_dim, generator=g) * 2
    return model, cond, latent_noise(list(range(6)), model.cfg.latent_dim) * 2


@torch.inference_mode()
def reference(model: CVAE, cond: torch.Tensor, z: torch.Tensor, max_len: int, strategy: str,
              uniforms: torch.Tensor | None, **sampling) -> tuple[list[list[int]], list[float]]:
    """Each row alone, step by step, log p from a float64 log-softmax of the logits with the banned ids removed."""
    tokens, logprob = [], []
    for i in range(cond.shape[0]):
        state, _ = model.init_decoder(cond[i:i + 1], z[i:i + 1])
        prev, toks, lp = torch.tensor([BOS_ID]), [], 0.0
        for t in range(max_len):
            logits, state = model.decode_step(prev, state)
            logits = logits.float()
            logits[:, list(BANNED)] = float("-inf")
            if strategy == "greedy":
                tok = int(logits.argmax())
            else:
                tok = int(sample_from(filter_logits(logits, **sampling), uniforms[i:i + 1, t]))
            lp += float(torch.log_softmax(logits.double(), dim=-1)[0, tok])
            if tok == EOS_ID:
                break
            toks.append(tok)
            prev = torch.tensor([tok])
        tokens.append(toks)
        logprob.append(lp)
    return tokens, logprob


@pytest.mark.parametrize("strategy, sampling", [("greedy", {}), ("sample", {}),
                                                ("sample", {"temperature": 0.7, "top_k": 20, "top_p": 0.9})])
def test_decode_matches_a_row_by_row_reference(strategy, sampling):
    model, cond, z = tiny()
    u = sampling_uniforms(list(range(6)), 12) if strategy == "sample" else None
    out = decode(model, cond, z, 12, strategy, uniforms=u, banned=BANNED, **sampling)
    ref_tokens, ref_logprob = reference(model, cond, z, 12, strategy, u, **sampling)
    assert out.tokens == ref_tokens
    assert {len(t) for t in out.tokens} != {12}  # some rows stop early: rows leave the batch mid-call
    assert out.logprob == pytest.approx(ref_logprob, abs=1e-4)
    assert out.n_scored == [len(t) + (f == "eos") for t, f in zip(out.tokens, out.finish_reason)]


def test_decode_reads_the_device_once_per_step():
    """One read back to Python per step (the tokens and their log-probabilities together), whatever the
    strategy: on a GPU each read waits for the device."""
    model, cond, z = tiny()
    for strategy in ("greedy", "sample"):
        with HostReads() as counter:
            out = decode(model, cond, z, 12, strategy, banned=BANNED)
        steps = max(out.n_scored)
        assert steps > 1
        assert counter.reads == steps, (strategy, dict(counter.calls))
        assert counter.calls["cpu"] == steps, (strategy, dict(counter.calls))


def test_host_read_counter_counts_reads():
    x = torch.arange(3)
    with HostReads() as counter:
        x.tolist()
        x[0].item()
        bool(x[1])
        x.cpu()
        x + 1
    assert counter.reads == 3 and counter.calls["cpu"] == 1
