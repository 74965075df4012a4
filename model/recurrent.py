"""Fast training paths for the recurrent layers and the vocabulary loss, on the weights of ``nn.GRU`` and
``nn.Linear`` (so checkpoints and bundles keep their layout and decoding steps keep using the modules).

Why not ``nn.GRU`` over a packed sequence: on the CPU its backward pass slices the input projections of
all tokens once per time step, and each slice's gradient allocates and zero-fills a tensor of the whole
(tokens x 3H) size, so the backward pass moves O(T x tokens) memory (measured: 57% of a training step at the
``cpu`` preset). Here the input projections of a whole sequence, both directions at once, are one matrix
product; the sequence is split per time step with ``unbind`` (whose backward is one ``stack``); rows are
sorted by length so that at step t only the rows still running are computed (as packing does); and the
recurrence is the GRU of PyTorch's documentation, gate order (r, z, n):

    r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
    z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
    h' = (1 - z) * n + z * h

The vocabulary loss (:func:`linear_cross_entropy`) computes logits, loss and gradients chunk by chunk in the
forward pass, so the (tokens x vocabulary) logits never exist whole and the backward pass is three scalings.
Both match the reference modules within float rounding (tests pin them).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class SortedLengths:
    """Rows sorted by length, longest first, and how many rows still run at each time step."""

    def __init__(self, lens: Sequence[int] | torch.Tensor):
        lengths = np.asarray(lens.tolist() if isinstance(lens, torch.Tensor) else list(lens), dtype=np.int64)
        if lengths.size == 0 or lengths.min() < 1:
            raise ValueError("every sequence needs at least one step")
        self.lens = lengths
        self.order = np.argsort(-lengths, kind="stable")  # sorted position -> row
        self.inverse = np.empty_like(self.order)
        self.inverse[self.order] = np.arange(len(self.order))  # row -> sorted position
        self.steps = int(lengths.max())
        sorted_lens = lengths[self.order]
        # running[t]: rows with length > t (a prefix of the sorted rows)
        self.running = [int(np.searchsorted(-sorted_lens, -t, side="left")) for t in range(self.steps)]

    def flat_index(self, width: int, reverse: bool = False) -> np.ndarray:
        """For each step t and each sorted row still running, the flat position row * width + t of its input
        in a (rows, width) array; with ``reverse``, position lens[row] - 1 - t (the row read backwards).
        Time-major: the order of :func:`gru_layer`'s outputs."""
        parts = []
        for t, b in enumerate(self.running):
            rows = self.order[:b]
            parts.append(rows * width + (self.lens[rows] - 1 - t if reverse else t))
        return np.concatenate(parts)


class _GRUCell(torch.autograd.Function):
    """h' = n + z * (h - n) from the gate pre-activations gi = W_i x + b_i and gh = W_h h + b_h (b, 3H), with
    an analytic backward pass: one autograd node per step instead of a dozen."""

    @staticmethod
    def forward(ctx, gi, gh, h):  # type: ignore[override]
        H = h.shape[1]
        rz = torch.sigmoid(gi[:, :2 * H] + gh[:, :2 * H])
        r, z = rz[:, :H], rz[:, H:]
        hn = gh[:, 2 * H:]
        n = torch.tanh(torch.addcmul(gi[:, 2 * H:], r, hn))
        h_new = torch.addcmul(n, z, h - n)
        ctx.save_for_backward(rz, n, hn, h)
        return h_new

    @staticmethod
    def backward(ctx, g):  # type: ignore[override]
        rz, n, hn, h = ctx.saved_tensors
        H = h.shape[1]
        r, z = rz[:, :H], rz[:, H:]
        da_n = g * (1 - z) * (1 - n * n)
        da_r = da_n * hn * r * (1 - r)
        da_z = g * (h - n) * z * (1 - z)
        d_gi = torch.cat([da_r, da_z, da_n], dim=1)
        d_gh = torch.cat([da_r, da_z, da_n * r], dim=1)
        return d_gi, d_gh, g * z


def _recur(xs: Sequence[torch.Tensor], sl: SortedLengths, h: torch.Tensor, w_hh: torch.Tensor,
           b_hh: torch.Tensor, outputs: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Run the recurrence over per-step input projections xs[t] (running[t], 3H) of sorted rows; returns
    (per-step outputs, final states in sorted order)."""
    finals: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    for t, b in enumerate(sl.running):
        if b < h.shape[0]:
            h = h[:b]
        h = _GRUCell.apply(xs[t], F.linear(h, w_hh, b_hh), h)  # (b, H)
        if outputs:
            outs.append(h)
        nb = sl.running[t + 1] if t + 1 < len(sl.running) else 0
        if nb < b:
            finals.append(h[nb:])
    return outs, torch.cat(finals[::-1])


Inputs = torch.Tensor | Callable[[torch.Tensor], torch.Tensor]


def gru_layer(rnn: nn.GRU, x: Inputs, sl: SortedLengths, h0: torch.Tensor | None = None,
              outputs: bool = False, width: int = 0) -> tuple[torch.Tensor | None, torch.Tensor]:
    """A one-layer ``nn.GRU`` (batch_first, uni- or bidirectional) over right-padded sequences.

    ``x`` is the padded input (N, T, E), or a function that returns the inputs at given flat positions
    row * width + t of a padded (N, width) layout (so token inputs are embedded only where real, in the order
    needed). Returns (outputs, final
    states). Outputs (forward direction only, ``outputs=True``): (sum of lengths, H), time-major over the
    rows sorted by length, in the order of ``sl.flat_index(T)``. Final states: (N, H) for one direction,
    (N, 2H) = [forward, backward] for two, in the rows' own order.
    """
    if rnn.num_layers != 1 or not rnn.batch_first or not rnn.bias:
        raise ValueError("gru_layer supports one batch-first layer with biases")
    N = len(sl.lens)
    H = rnn.hidden_size
    w_hh = rnn.weight_hh_l0
    assert isinstance(w_hh, torch.Tensor)  # a Parameter; nn.Module's attribute lookup is typed loosely
    if isinstance(x, torch.Tensor):
        T, device = x.shape[1], x.device
        flat_x = x.reshape(N * T, -1)
        lookup: Callable[[torch.Tensor], torch.Tensor] = lambda idx: flat_x.index_select(0, idx)  # noqa: E731
    else:
        if width < sl.steps:
            raise ValueError("gru_layer: give the padded width of the inputs the lookup reads")
        T, device, lookup = width, w_hh.device, x
    h_init = (torch.zeros(N, H, device=device, dtype=w_hh.dtype) if h0 is None
              else h0.index_select(0, torch.from_numpy(sl.order).to(device)))
    finals, outs_fwd = [], []
    for d in range(2 if rnn.bidirectional else 1):
        sfx = "_reverse" if d else ""
        idx = torch.from_numpy(sl.flat_index(T, reverse=bool(d))).to(device)
        proj = F.linear(lookup(idx), getattr(rnn, "weight_ih_l0" + sfx), getattr(rnn, "bias_ih_l0" + sfx))
        xs = proj.split(sl.running)  # every input projection of a direction in one product
        outs, final = _recur(xs, sl, h_init, getattr(rnn, "weight_hh_l0" + sfx), getattr(rnn, "bias_hh_l0" + sfx),
                             outputs and d == 0)
        if d == 0:
            outs_fwd = outs
        finals.append(final.index_select(0, torch.from_numpy(sl.inverse).to(device)))
    out = torch.cat(outs_fwd) if outputs else None
    return out, finals[0] if len(finals) == 1 else torch.cat(finals, dim=-1)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, chunk, need_grad):  # type: ignore[override]
        h = hidden.float()
        w = weight.float()
        b = bias.float()
        total = h.new_zeros((), dtype=torch.float64)
        grads = None
        if need_grad:
            gh = torch.empty_like(h)
            gw = torch.zeros_like(w)
            gb = torch.zeros_like(b)
        buf = h.new_empty(min(chunk, h.shape[0]), w.shape[0])  # one (chunk, V) buffer, reused in place
        for s in range(0, h.shape[0], chunk):
            hc, tc = h[s:s + chunk], targets[s:s + chunk].unsqueeze(1)
            logits = torch.addmm(b, hc, w.t(), out=buf[:hc.shape[0]])  # (c, V)
            picked = logits.gather(1, tc)  # (c, 1)
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # unnormalised, in place
            norm = probs.sum(dim=1, keepdim=True)
            total += (top + norm.log() - picked).sum(dtype=torch.float64)
            if need_grad:
                # d(nll)/d(logits) = softmax - onehot, in the same buffer
                g = probs.div_(norm)
                g.scatter_add_(1, tc, g.new_full(tc.shape, -1.0))
                torch.mm(g, w, out=gh[s:s + chunk])
                gw.addmm_(g.t(), hc)
                gb += g.sum(0)
        if need_grad:
            grads = (gh.to(hidden.dtype), gw.to(weight.dtype), gb.to(bias.dtype))
            ctx.save_for_backward(*grads)
        ctx.need_grad = need_grad
        return total.float()

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        if not ctx.need_grad:
            raise RuntimeError("linear_cross_entropy was called without gradients")
        gh, gw, gb = ctx.saved_tensors
        return gh * grad_out, gw * grad_out, gb * grad_out, None, None, None


def linear_cross_entropy(hidden: torch.Tensor, linear: nn.Linear, targets: torch.Tensor,
                         chunk: int = 512) -> torch.Tensor:
    """sum_i -log softmax(linear(hidden_i))[targets_i] over rows of hidden (N, H), in float32 (nats).

    Equal to ``F.cross_entropy(linear(hidden), targets, reduction="sum")`` up to rounding, without keeping
    the (N, V) logits: each chunk's gradient is computed right away (softmax - one-hot) and kept as the
    (N, H), (V, H) and (V,) gradients of the inputs.
    """
    need = torch.is_grad_enabled() and (hidden.requires_grad or linear.weight.requires_grad)
    return _LinearCrossEntropy.apply(hidden, linear.weight, linear.bias, targets, chunk, need)


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the system each time.

    A training step allocates and frees the same tensors of tens of MB every step; by default glibc hands
    blocks over 128 KB back to the kernel, so every step pays page faults to zero them again. Raising the
    mmap and trim thresholds (glibc's ``mallopt``) keeps them in the heap. Returns whether it applied.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        ok = libc.mallopt(M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
        return bool(libc.mallopt(M_TRIM_THRESHOLD, 1 << 30) == 1 and ok)
    except (OSError, AttributeError):
        return False
