"""The fast training paths (model.recurrent) against the reference modules they replace."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence

from model.config import preset
from model.cvae import CVAE
from model.recurrent import SortedLengths, gru_layer, linear_cross_entropy

from tests.model.test_cvae import CONFIGS, make_batch


def _reference_gru(rnn: nn.GRU, x: torch.Tensor, lens: list[int], h0: torch.Tensor | None):
    packed = pack_padded_sequence(x, torch.tensor(lens), batch_first=True, enforce_sorted=False)
    hx = None if h0 is None else h0.unsqueeze(0).repeat(2 if rnn.bidirectional else 1, 1, 1)
    out, h = rnn(packed, hx)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return out, torch.cat(list(h), dim=-1)


@pytest.mark.parametrize("bidirectional", [False, True])
@pytest.mark.parametrize("with_h0", [False, True])
def test_gru_layer_matches_nn_gru_values_and_gradients(bidirectional, with_h0):
    torch.manual_seed(0)
    rnn = nn.GRU(5, 7, batch_first=True, bidirectional=bidirectional).double()
    lens = [4, 1, 6, 3, 6, 2]
    x = torch.randn(len(lens), 6, 5, dtype=torch.double, requires_grad=True)
    h0 = torch.randn(len(lens), 7, dtype=torch.double, requires_grad=True) if with_h0 else None
    sl = SortedLengths(lens)
    out, final = gru_layer(rnn, x, sl, h0=h0, outputs=True)
    ref_out, ref_final = _reference_gru(rnn, x, lens, h0)
    torch.testing.assert_close(final, ref_final)
    # outputs: the forward direction at every real position, in sl.flat_index order
    flat = torch.from_numpy(sl.flat_index(6))
    ref_flat = ref_out[..., :7].reshape(-1, 7).index_select(0, flat)
    torch.testing.assert_close(out, ref_flat)

    grads = torch.autograd.grad((final.sin().sum() + out.cos().sum()), [x, *rnn.parameters()])
    ref_grads = torch.autograd.grad((ref_final.sin().sum() + ref_flat.cos().sum()), [x, *rnn.parameters()])
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)


def test_sorted_lengths_rejects_empty_sequences():
    with pytest.raises(ValueError, match="at least one step"):
        SortedLengths([3, 0])


@pytest.mark.parametrize("chunk", [3, 512])
def test_linear_cross_entropy_matches_cross_entropy(chunk):
    torch.manual_seed(0)
    lin = nn.Linear(6, 11).double()
    h = torch.randn(10, 6, dtype=torch.double, requires_grad=True)
    t = torch.randint(0, 11, (10,))
    got = linear_cross_entropy(h, lin, t, chunk=chunk)
    want = F.cross_entropy(lin(h).float(), t, reduction="sum")
    torch.testing.assert_close(got, want.float())
    g = torch.autograd.grad(got * 2.0, [h, lin.weight, lin.bias])
    w = torch.autograd.grad(F.cross_entropy(lin(h), t, reduction="sum") * 2.0, [h, lin.weight, lin.bias])
    for a, b in zip(g, w):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def _reference_model(model: CVAE) -> CVAE:
    return copy.deepcopy(model).use_reference_path()


@pytest.mark.parametrize("name", CONFIGS)
def test_fast_path_losses_and_gradients_match_the_reference_in_fp32(name):
    """The issue's bar: losses within 1e-4 relative of the reference path on fixed batches, in fp32."""
    cfg = CONFIGS[name]
    torch.manual_seed(0)
    model = CVAE(cfg)
    ref = _reference_model(model)
    for seed in range(3):
        batch = make_batch(cfg, B=6, seed=seed)
        torch.manual_seed(seed)
        out = model(batch)
        torch.manual_seed(seed)
        want = ref(batch)
        for k in ("rc_loss", "kl", "bow_loss", "act_loss", "n_tokens"):
            torch.testing.assert_close(out[k].float(), want[k].float(), rtol=1e-4, atol=1e-5)
        loss = out["rc_loss"] + out["kl"] + out["bow_loss"] + out["act_loss"]
        ref_loss = want["rc_loss"] + want["kl"] + want["bow_loss"] + want["act_loss"]
        g = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
        r = torch.autograd.grad(ref_loss, list(ref.parameters()), allow_unused=True)
        for (pname, _), a, b in zip(model.named_parameters(), g, r):
            if a is None or b is None:
                assert a is None and b is None, pname
                continue
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-5, msg=lambda m: f"{pname}: {m}")


def test_golden_loss_of_a_fixed_model_and_batch():
    """Pins the fast path's loss on a fixed seed (tolerance for CPU kernel differences between machines)."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = CVAE(cfg)
    batch = make_batch(cfg, B=4, seed=0)
    torch.manual_seed(1)
    out = model(batch)
    assert out["n_tokens"].item() == 18
    assert out["rc_loss"].item() == pytest.approx(18.58407, rel=1e-4)
    assert out["bow_loss"].item() == pytest.approx(18.75213, rel=1e-4)
    assert out["kl"].item() == pytest.approx(0.010574, rel=1e-3)


def test_fast_path_runs_under_bf16_autocast_on_cpu():
    """train.amp=bf16 (where the CPU has bf16 instructions): the fast path's losses stay close to fp32."""
    torch.manual_seed(0)
    cfg = preset("tiny")
    model = CVAE(cfg)
    batch = make_batch(cfg, B=4, seed=0)
    torch.manual_seed(1)
    ref = model(batch)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(batch)
    (out["rc_loss"] + out["bow_loss"]).backward()
    for k in ("rc_loss", "bow_loss"):
        assert abs(out[k].float().item() - ref[k].item()) / ref[k].item() < 0.02
    assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
