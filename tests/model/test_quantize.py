"""Int8 decoder quantization (model.quantize): what it changes, what it leaves alone, how close it stays."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.config import BOS_ID, preset
from model.cvae import CVAE
from model.decoding import decode
from model.quantize import is_quantized, quantize_decoder, quantize_engine

pytestmark = [pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::UserWarning")]

needs_int8 = pytest.mark.skipif(quantize_engine() is None, reason="this torch build has no fbgemm/x86 kernels")


def tiny_model(seed: int = 0) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(preset("tiny", vocab_size=64, max_decode_len=12)).eval()


def test_none_is_a_no_op():
    m = tiny_model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    assert quantize_decoder(m, "none") is m
    assert not is_quantized(m)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError, match="unknown quantization"):
        quantize_decoder(tiny_model(), "int4")


@needs_int8
def test_only_the_decoder_is_quantized_and_encoders_keep_their_outputs():
    ref, m = tiny_model(), tiny_model()
    quantize_decoder(m, "int8")
    assert is_quantized(m)
    assert type(m.decoder.out) is not nn.Linear and type(m.decoder.rnn) is not nn.GRU
    assert type(m.decoder.init) is nn.Linear and type(m.utt_encoder.rnn) is nn.GRU
    from model.inputs import collate

    batch = collate([[[BOS_ID, 5, 6, 3], [BOS_ID, 7, 3]]], [[0, 1]])
    with torch.inference_mode():
        assert torch.equal(ref.encode(batch), m.encode(batch))
    assert quantize_decoder(m, "int8") is m  # idempotent


@needs_int8
def test_quantized_step_is_close_to_fp32():
    ref, m = tiny_model(), quantize_decoder(tiny_model(), "int8")
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(4, 64, (6,), generator=g)
    state = torch.randn(6, ref.cfg.dec_hidden, generator=g) * 0.5
    with torch.inference_mode():
        lr, sr = ref.decode_step(tokens, state)
        lq, sq = m.decode_step(tokens, state)
    assert (lr - lq).abs().max() < 0.05 * lr.abs().max()
    assert (sr - sq).abs().max() < 0.05


@needs_int8
def test_quantized_decoding_is_deterministic_and_row_wise():
    m = quantize_decoder(tiny_model(), "int8")
    g = torch.Generator().manual_seed(2)
    cond = torch.randn(4, m.cfg.cond_dim, generator=g)
    z = torch.randn(4, m.cfg.latent_dim, generator=g)
    a = decode(m, cond, z, 12)
    b = decode(m, cond, z, 12)
    assert a.tokens == b.tokens and a.logprob == b.logprob
    # int8 products accumulate exactly in integers, so a row alone decodes as it does in the batch
    alone = [decode(m, cond[i:i + 1], z[i:i + 1], 12).tokens[0] for i in range(4)]
    assert alone == a.tokens


def test_quantization_refuses_a_model_off_the_cpu():
    """A model on another device (CUDA, here the storage-less "meta" device, which any build has) is refused."""
    m = tiny_model().to("meta")
    with pytest.raises(ValueError, match="CPU only"):
        quantize_decoder(m, "int8")
    assert not is_quantized(m)


@needs_int8
def test_load_bundle_quantize(tmp_path):
    from tests.conftest import build_tiny_bundle

    path = build_tiny_bundle(tmp_path / "tiny")
    plain = load_bundle(path)
    q = load_bundle(path, quantize="int8")
    assert not is_quantized(plain.model) and is_quantized(q.model)
    assert q.sha256 == plain.sha256  # the same bundle, quantized on load
    with pytest.raises(ValueError, match="unknown quantization"):
        load_bundle(path, quantize="fp8")


CONTEXT = ["Hi, how are you doing today?", "Not bad. Any plans for the weekend?"]


@needs_int8
def test_default_bundle_int8_scores_stay_close_to_fp32():
    """The int8 decoder scores the fp32 model's replies within 0.1 nats per token of fp32. (Exact int8 strings
    depend on the CPU's integer kernels, so they are not pinned.)"""
    from app.engine import Engine

    fp32 = Engine.from_bundle(DEFAULT_BUNDLE, device="cpu", torch_threads=1)
    res = fp32.respond(CONTEXT, n=5, seed=0, dedupe=False, rerank=False)
    tokens = [fp32.tokenizer.encode(r.text) for r in res.replies]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = Engine.from_bundle(DEFAULT_BUNDLE, device="cpu", torch_threads=1, quantize="int8")
    assert int8.info()["quantize"] == "int8"
    from model.inputs import encode_contexts

    cond = encode_contexts(fp32.bundle, [CONTEXT])[0]
    z = cond.new_zeros(len(tokens), fp32.config.latent_dim)
    a = fp32.model.sequence_logprob(cond.expand(len(tokens), -1), z, tokens)
    b = int8.model.sequence_logprob(cond.expand(len(tokens), -1), z, tokens)
    for x, y, t in zip(a, b, tokens):
        assert abs(x - y) / (len(t) + 1) < 0.1
    replies = int8.respond(CONTEXT, n=5, seed=0).replies
    assert len(replies) == 5 and all(r.text for r in replies)


@needs_int8
def test_service_setting_and_cli_flag(tmp_path, monkeypatch):
    from pydantic import ValidationError

    from app.__main__ import respond_parser, serve_parser
    from app.engine import Engine
    from app.settings import Settings
    from tests.conftest import build_tiny_bundle

    monkeypatch.setenv("DIALOG_QUANTIZE", "int8")
    assert Settings().quantize == "int8"
    monkeypatch.delenv("DIALOG_QUANTIZE")
    assert Settings().quantize == "none"
    with pytest.raises(ValidationError):
        Settings(quantize="int4")
    assert serve_parser().parse_args(["--quantize", "int8"]).quantize == "int8"
    assert respond_parser().parse_args(["hi", "--quantize", "int8"]).quantize == "int8"
    engine = Engine.from_bundle(build_tiny_bundle(tmp_path / "tiny"), device="cpu", torch_threads=1,
                                quantize="int8")
    assert is_quantized(engine.model) and engine.info()["quantize"] == "int8"
    assert engine.respond(["hi there"], n=3, seed=1).n_returned >= 1


def test_bf16_runs_the_vocabulary_projection_in_bf16_and_keeps_the_rest(tiny_bundle, monkeypatch):
    import torch

    from model.bundle import load_bundle
    from model.quantize import Bf16Linear, is_quantized, quantize_decoder

    b = load_bundle(tiny_bundle)
    ref = load_bundle(tiny_bundle)
    monkeypatch.setattr("model.quantize.cpu_has_bf16", lambda: True)  # the check, not the speed, is tested here
    quantize_decoder(b.model, "bf16")
    assert isinstance(b.model.decoder.out, Bf16Linear) and is_quantized(b.model)
    assert b.model.decoder.out.weight.dtype == torch.bfloat16
    assert type(b.model.decoder.rnn) is type(ref.model.decoder.rnn)  # the GRU stays fp32
    x = torch.randn(7, b.model.decoder.out.in_features)
    got, want = b.model.decoder.out(x), ref.model.decoder.out(x)
    assert got.dtype == torch.float32 and got.shape == want.shape
    assert torch.allclose(got, want, atol=0.05 * want.abs().max().item())  # bf16's 8 bits of mantissa


def test_bf16_is_refused_on_a_cpu_without_bf16_instructions(tiny_bundle, monkeypatch):
    import pytest

    from model.bundle import load_bundle
    from model.quantize import quantize_decoder

    monkeypatch.setattr("model.quantize.cpu_has_bf16", lambda: False)
    b = load_bundle(tiny_bundle)
    with pytest.raises(ValueError, match="AVX512-BF16 or AMX"):
        quantize_decoder(b.model, "bf16")
    assert type(b.model.decoder.out).__name__ == "Linear"  # left as it was
