import pytest
import torch

from model.config import BOS_ID, EOS_ID, PAD_ID, CVAEConfig, preset
from model.cvae import CVAE, gaussian_kl
from model.decoding import decode, filter_logits, latent_noise, sample_from, sampling_uniforms
from model.inputs import collate, serving_context


def make_batch(cfg: CVAEConfig, B: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)

    def utt(n):
        return [BOS_ID, *torch.randint(5, cfg.vocab_size, (n,), generator=g).tolist(), EOS_ID]

    contexts = [[utt(3 + (b + j) % 4) for j in range(1 + b % 3)] for b in range(B)]
    flags = [[(j + b) % 2 for j in range(len(c))] for b, c in enumerate(contexts)]
    responses = [utt(2 + b) for b in range(B)]
    topics = [b % max(cfg.n_topics, 1) for b in range(B)] if cfg.n_topics else None
    meta = [[0.5] * cfg.meta_dim for _ in range(B)] if cfg.meta_dim else None
    acts = [1 + b % (cfg.n_acts - 1) for b in range(B)] if cfg.kgcvae else None
    return collate(contexts, flags, responses, topics=topics, meta=meta, acts=acts)


CONFIGS = {
    "cvae": preset("tiny"),
    "kgcvae+topic+meta": preset("tiny", kgcvae=True, n_acts=5, n_topics=3, meta_dim=6),
}


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes_and_loss_terms(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = CVAE(cfg)
    batch = make_batch(cfg)
    cond = model.encode(batch)
    assert cond.shape == (4, cfg.cond_dim)
    mu, logvar = model.prior(cond)
    assert mu.shape == logvar.shape == (4, cfg.latent_dim)
    out = model(batch)
    for k in ("rc_loss", "kl", "bow_loss", "act_loss"):
        assert out[k].dim() == 0 and torch.isfinite(out[k])
    assert out["kl"] >= 0
    assert int(out["n_tokens"]) == int((batch.resp_lens - 1).sum())
    assert out["mu_q"].shape == (4, cfg.latent_dim)
    assert (out["act_loss"] > 0) == cfg.kgcvae


def test_kl_is_zero_when_posterior_equals_prior():
    mu = torch.randn(3, 5)
    logvar = torch.randn(3, 5)
    assert torch.allclose(gaussian_kl(mu, logvar, mu, logvar), torch.zeros(3), atol=1e-6)
    # and positive otherwise, matching the closed form for unit variances: |mu_q - mu_p|^2 / 2
    zeros = torch.zeros(1, 2)
    assert gaussian_kl(torch.tensor([[1.0, 2.0]]), zeros, zeros, zeros).item() == pytest.approx(2.5)


def test_padding_does_not_change_the_loss():
    cfg = preset("tiny")
    torch.manual_seed(0)
    model = CVAE(cfg).eval()
    batch = make_batch(cfg, B=2)
    torch.manual_seed(1)
    a = model(batch)["rc_nll_sum"]
    padded = make_batch(cfg, B=2)
    padded.resp_tokens = torch.cat([padded.resp_tokens, torch.full((2, 5), PAD_ID)], dim=1)
    torch.manual_seed(1)
    b = model(padded)["rc_nll_sum"]
    assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("name", CONFIGS)
def test_loss_falls_when_overfitting_two_batches(name):
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = CVAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    batches = [make_batch(cfg, seed=1), make_batch(cfg, seed=2)]

    def total():
        with torch.no_grad():
            torch.manual_seed(5)
            return sum(float(model(b)["rc_loss"] + model(b)["bow_loss"]) for b in batches)

    before = total()
    for step in range(100):
        out = model(batches[step % 2])
        loss = out["rc_loss"] + 0.1 * out["kl"] + out["bow_loss"] + out["act_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert total() < 0.6 * before


def test_serving_context_flags_alternate_back_from_the_last_turn():
    turns, flags = serving_context([[7], [8, 9], [10]], dialog_start_id=4, max_turns=10, max_len=40)
    assert turns[0] == [BOS_ID, 4, EOS_ID]
    assert flags == [0, 0, 1, 0]  # the last turn is the other party's
    turns, flags = serving_context([[7]] * 12, 4, max_turns=10, max_len=40)
    assert len(turns) == 10 and flags[-1] == 0 and flags[-2] == 1
    turns, _ = serving_context([list(range(5, 100))], 4, max_turns=10, max_len=40)
    assert len(turns[-1]) == 42  # cut to 40 tokens plus <s> and </s>


def test_filter_logits_on_literal_tensors():
    logits = torch.tensor([[1.0, 3.0, 2.0, 0.0]])
    top2 = filter_logits(logits, top_k=2)
    assert torch.isinf(top2[0, [0, 3]]).all() and torch.isfinite(top2[0, [1, 2]]).all()
    # probabilities ~ [0.087, 0.644, 0.237, 0.032]: top_p=0.7 keeps the two largest
    nucleus = filter_logits(logits, top_p=0.7)
    assert torch.isfinite(nucleus[0, [1, 2]]).all() and torch.isinf(nucleus[0, [0, 3]]).all()
    assert torch.equal(filter_logits(logits, temperature=2.0), logits / 2)
    with pytest.raises(ValueError):
        filter_logits(logits, temperature=0)


def test_inverse_cdf_sampling():
    logits = torch.log(torch.tensor([[0.25, 0.25, 0.5], [0.25, 0.25, 0.5]]))
    assert sample_from(logits, torch.tensor([0.1, 0.9])).tolist() == [0, 2]
    assert sample_from(logits, torch.tensor([0.3, 0.49])).tolist() == [1, 1]


def test_per_row_randomness_does_not_depend_on_the_batch():
    assert torch.equal(latent_noise([5, 9], 4)[1], latent_noise([9], 4)[0])
    assert torch.equal(sampling_uniforms([5, 9], 7)[1], sampling_uniforms([9], 7)[0])


@pytest.mark.parametrize("strategy", ["greedy", "sample"])
def test_decode_rows_are_independent_of_batch_company(strategy):
    cfg = preset("tiny", max_decode_len=8)
    torch.manual_seed(0)
    model = CVAE(cfg).eval()
    batch = make_batch(cfg, B=3)
    cond = model.encode(batch)
    z = latent_noise([1, 2, 3], cfg.latent_dim)
    u = sampling_uniforms([1, 2, 3], 8)
    together = decode(model, cond, z, 8, strategy, uniforms=u)
    alone = decode(model, cond[2:], z[2:], 8, strategy, uniforms=u[2:])
    assert together.tokens[2] == alone.tokens[0]
    assert together.finish_reason[2] == alone.finish_reason[0]
    for toks in together.tokens:
        assert PAD_ID not in toks and BOS_ID not in toks and len(toks) <= 8


def test_config_round_trip_and_validation():
    cfg = preset("zhao", kgcvae=True, n_acts=42)
    assert CVAEConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.embed_dim, cfg.utt_hidden, cfg.ctx_hidden, cfg.latent_dim, cfg.dec_hidden,
            cfg.vocab_size) == (200, 300, 600, 200, 400, 10000)
    with pytest.raises(ValueError, match="unknown"):
        CVAEConfig.from_dict({"latent": 3})
    with pytest.raises(ValueError, match="n_acts"):
        preset("tiny", kgcvae=True)
