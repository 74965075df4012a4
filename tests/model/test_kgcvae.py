"""The two kgCVAE styles: Zhao et al.'s (the default) and the legacy one that older models were trained with."""
import copy
import json

import pytest
import torch

from model.bundle import load_bundle, save_bundle, write_manifest
from model.config import CVAEConfig, preset
from model.cvae import CVAE
from model.decoding import decode
from model.tokenizer import Tokenizer

from tests.model.test_cvae import make_batch

KG = dict(kgcvae=True, n_acts=5, n_topics=3, meta_dim=6)


def kg_model(style: str, seed: int = 0, **overrides) -> CVAE:
    torch.manual_seed(seed)
    return CVAE(preset("tiny", kgcvae_style=style, **{**KG, **overrides})).eval()


def test_the_default_is_zhao_and_a_stored_config_without_the_field_is_legacy():
    assert preset("tiny", **KG).kgcvae_style == "zhao"
    stored = preset("tiny", **KG).to_dict()
    del stored["kgcvae_style"]
    assert CVAEConfig.from_stored(stored).kgcvae_style == "legacy"
    assert CVAEConfig.from_stored({**stored, "kgcvae_style": "zhao"}).kgcvae_style == "zhao"
    with pytest.raises(ValueError, match="kgcvae_style must be one of zhao, legacy"):
        preset("tiny", kgcvae_style="original", **KG)
    with pytest.raises(ValueError, match="kgcvae_style must be a string"):
        preset("tiny", kgcvae_style=1, **KG)


def test_legacy_path_is_unchanged():
    """Golden values of the kgCVAE as it was before kgcvae_style existed (recorded from that code on this seed):
    losses, teacher-forced scores, the gradient norm and greedy decoding all stay as they were."""
    model = kg_model("legacy")
    batch = make_batch(model.cfg)
    torch.manual_seed(1)
    with torch.no_grad():
        out = model(batch)
    got = {k: float(out[k]) for k in ("rc_loss", "kl", "bow_loss", "act_loss")}
    assert got == pytest.approx({"rc_loss": 18.827915, "kl": 0.091278, "bow_loss": 18.685909,
                                 "act_loss": 1.611577}, rel=1e-4)
    with torch.no_grad():
        cond = model.encode(batch)
        mu, _ = model.prior(cond)
    d = decode(model, cond, mu, 8)
    assert d.tokens == [[17, 17, 17, 17, 22, 35, 22, 22]] * 4
    assert d.logprob == pytest.approx([-32.245811, -32.24473, -32.244792, -32.2462], rel=1e-4)
    assert model.sequence_logprob(cond, mu, d.tokens) == pytest.approx(
        [-36.869836, -36.868696, -36.868786, -36.870234], rel=1e-4)
    model.train()
    torch.manual_seed(2)
    o = model(batch)
    (o["rc_loss"] + o["kl"] + o["bow_loss"] + o["act_loss"]).backward()
    norm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
    assert float(norm) == pytest.approx(2.263253, rel=1e-4)


def test_zhao_shapes():
    model = kg_model("zhao")
    cfg = model.cfg
    assert model.decoder.rnn.input_size == cfg.embed_dim + cfg.act_dim
    assert model.recog_net.act_fc is not None
    legacy = kg_model("legacy")
    assert legacy.decoder.rnn.input_size == cfg.embed_dim and legacy.recog_net.act_fc is None
    batch = make_batch(cfg)
    cond = model.encode(batch)
    z = torch.randn(4, cfg.latent_dim)
    state, act_logits = model.init_decoder(cond, z)
    assert state.shape == (4, cfg.dec_hidden + cfg.act_dim) and act_logits.shape == (4, cfg.n_acts)
    logits, new = model.decode_step(torch.full((4,), 5), state)
    assert logits.shape == (4, cfg.vocab_size) and new.shape == state.shape
    # the act part rides along unchanged; the GRU part moves
    assert torch.equal(new[:, cfg.dec_hidden:], state[:, cfg.dec_hidden:])
    assert not torch.allclose(new[:, :cfg.dec_hidden], state[:, :cfg.dec_hidden])
    x, h0 = model.rnn_inputs(torch.zeros(4, 7, cfg.embed_dim), state)
    assert x.shape == (4, 7, cfg.embed_dim + cfg.act_dim) and h0.shape == (1, 4, cfg.dec_hidden)


def test_the_recognition_network_sees_tanh_of_the_act_embedding():
    model = kg_model("zhao")
    batch = make_batch(model.cfg)
    cond = model.encode(batch)
    x_vec = model.utt_encoder(batch.resp_tokens, batch.resp_lens, model.embedding)
    fc = model.recog_net.act_fc[0]
    feats = torch.cat([cond, x_vec, torch.tanh(fc(model.act_embedding(batch.acts)))], dim=-1)
    want = model.recog_net.net(feats).chunk(2, dim=-1)
    for a, b in zip(model.posterior(cond, batch), want):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("style", ["zhao", "legacy"])
def test_the_act_reaches_every_decoder_step_only_in_zhaos_style(style):
    """With the act's columns of the initial-state layer zeroed, the act can reach the decoder only through the
    step inputs: then changing the given acts changes the reconstruction loss (z from the prior, which does not
    see the act) in Zhao's style and leaves it unchanged in the legacy one."""
    model = kg_model(style)
    cfg = model.cfg
    with torch.no_grad():
        model.decoder.init.weight[:, -cfg.act_dim:] = 0.0
    batch = make_batch(cfg)
    other = copy.copy(batch)
    other.acts = (batch.acts % (cfg.n_acts - 1)) + 1  # a different real act for every row
    assert not torch.equal(other.acts, batch.acts)
    losses = []
    for b in (batch, other):
        torch.manual_seed(3)
        with torch.no_grad():
            losses.append(float(model(b, use_prior=True)["rc_loss"]))
    if style == "zhao":
        assert abs(losses[0] - losses[1]) > 1e-4
    else:
        assert losses[0] == pytest.approx(losses[1], abs=1e-6)


def test_each_decoding_step_is_fed_the_act():
    """Same GRU state, same tokens, different act vector: the logits differ at every step."""
    model = kg_model("zhao")
    H, A = model.cfg.dec_hidden, model.cfg.act_dim
    h = torch.randn(2, H)
    acts = model.act_embedding.weight[1:3].detach()  # (2, A): two different act embeddings
    s1 = torch.cat([h[:1].expand(2, H), acts[:1].expand(2, A)], dim=-1)
    s2 = torch.cat([h[:1].expand(2, H), acts[1:2].expand(2, A)], dim=-1)
    tokens = torch.tensor([5, 9])
    with torch.no_grad():
        for _ in range(4):
            l1, s1 = model.decode_step(tokens, s1)
            l2, s2 = model.decode_step(tokens, s2)
            assert (l1 - l2).abs().max() > 1e-5


@pytest.mark.parametrize("style", ["zhao", "legacy"])
def test_step_by_step_decoding_matches_teacher_forcing(style):
    """decode_step (serving) and rnn_inputs (teacher forcing: training's reference path, sequence_logprob)
    compute the same logits."""
    model = kg_model(style)
    batch = make_batch(model.cfg)
    with torch.no_grad():
        cond = model.encode(batch)
        state, _ = model.init_decoder(cond, torch.randn(4, model.cfg.latent_dim))
        tokens = torch.randint(4, model.cfg.vocab_size, (4, 6))
        out, _ = model.decoder.rnn(*model.rnn_inputs(model.embedding(tokens), state))
        teacher = model.decoder.out(out)  # (4, 6, V)
        s = state
        for t in range(6):
            logits, s = model.decode_step(tokens[:, t], s)
            torch.testing.assert_close(logits, teacher[:, t], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("style", ["zhao", "legacy"])
def test_fast_path_matches_the_reference_path(style):
    model = kg_model(style)
    model.train()
    ref = copy.deepcopy(model).use_reference_path()
    batch = make_batch(model.cfg, B=6, seed=4)
    torch.manual_seed(5)
    out = model(batch)
    torch.manual_seed(5)
    want = ref(batch)
    for k in ("rc_loss", "kl", "act_loss"):
        torch.testing.assert_close(out[k], want[k], rtol=1e-4, atol=1e-5)
    g = torch.autograd.grad(out["rc_loss"], model.act_embedding.weight)[0]
    r = torch.autograd.grad(want["rc_loss"], ref.act_embedding.weight)[0]
    torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-6)
    assert g.abs().sum() > 0


def test_inference_uses_the_softmax_weighted_act_embedding():
    model = kg_model("zhao")
    cfg = model.cfg
    batch = make_batch(cfg)
    with torch.no_grad():
        cond = model.encode(batch)
        z = torch.randn(4, cfg.latent_dim)
        state, logits = model.init_decoder(cond, z)
        weighted = logits[:, 1:].softmax(-1) @ model.act_embedding.weight[1:]  # (4, A), "unknown" left out
        torch.testing.assert_close(state[:, cfg.dec_hidden:], weighted)
        want_h = model.decoder.init(torch.cat([cond, z, weighted], dim=-1))
        torch.testing.assert_close(state[:, :cfg.dec_hidden], want_h)
        # not the argmax act's embedding (which the legacy style uses)
        argmax = model.act_embedding(logits[:, 1:].argmax(-1) + 1)
        assert (weighted - argmax).abs().max() > 1e-4


def test_legacy_inference_uses_the_argmax_act():
    model = kg_model("legacy")
    batch = make_batch(model.cfg)
    with torch.no_grad():
        cond = model.encode(batch)
        z = torch.randn(4, model.cfg.latent_dim)
        state, logits = model.init_decoder(cond, z)
        given, _ = model.init_decoder(cond, z, logits[:, 1:].argmax(-1) + 1)
    torch.testing.assert_close(state, given)


def test_weighted_act_equals_the_argmax_act_when_the_predictor_is_certain():
    """When p(a | c, z) is one-hot, Zhao's weighted embedding is the argmax act's: inference equals teacher
    forcing with the predicted act."""
    model = kg_model("zhao")
    with torch.no_grad():
        model.act_predictor[-1].weight.mul_(1e4)
        model.act_predictor[-1].bias.mul_(1e4)
        batch = make_batch(model.cfg)
        cond = model.encode(batch)
        z = torch.randn(4, model.cfg.latent_dim)
        state, logits = model.init_decoder(cond, z)
        assert logits[:, 1:].softmax(-1).max(-1).values.min() > 1 - 1e-6
        forced, _ = model.init_decoder(cond, z, logits[:, 1:].argmax(-1) + 1)
    torch.testing.assert_close(state, forced, rtol=1e-5, atol=1e-5)


def test_the_style_does_not_touch_a_plain_cvae():
    outs = []
    for style in ("zhao", "legacy"):
        torch.manual_seed(0)
        model = CVAE(preset("tiny", kgcvae_style=style)).eval()
        batch = make_batch(model.cfg)
        torch.manual_seed(1)
        with torch.no_grad():
            outs.append((model.state_dict(), float(model(batch)["rc_loss"])))
    (a, la), (b, lb) = outs
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert la == lb


@pytest.mark.parametrize("style", ["zhao", "legacy"])
def test_bundles_load_with_their_style_and_decode_as_saved(tmp_path, style):
    from tests.conftest import synthetic_sentences

    tok = Tokenizer.train(synthetic_sentences(), vocab_size=64)
    model = kg_model(style, vocab_size=tok.vocab_size)
    path = tmp_path / style
    save_bundle(path, model, tok, name="kg", text_style="plain")
    if style == "legacy":  # a bundle written before kgcvae_style existed has no such field
        cfg_path = path / "config.json"
        config = json.loads(cfg_path.read_text())
        del config["model"]["kgcvae_style"]
        cfg_path.write_text(json.dumps(config))
        write_manifest(path)
    loaded = load_bundle(path)
    assert loaded.config.kgcvae_style == style
    batch = make_batch(model.cfg)
    with torch.no_grad():
        cond = model.encode(batch)
        mu, _ = model.prior(cond)
    want = decode(model, cond, mu, 8)
    got = decode(loaded.model, cond, mu, 8)
    assert got.tokens == want.tokens and got.logprob == pytest.approx(want.logprob, abs=1e-5)
