"""Decoding a batch of (condition, latent) rows: latent sampling and token policies.

Every row owns its randomness: its latent noise and its token-sampling uniforms come from a
generator seeded with the row's own seed, so a row's output does not depend on which other rows
share the batch (up to floating-point effects of the batch shape on matrix products).
"""
from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

import torch

from .config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from .cvae import CVAE
from .lexicon import PieceConstraint

Strategy = Literal["greedy", "sample"]
SEED_MOD = 2**63 - 1


def row_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) % SEED_MOD)


def latent_noise(seeds: list[int], dim: int) -> torch.Tensor:
    """eps (N, dim) ~ N(0, I), row i drawn from a generator seeded with seeds[i]."""
    return torch.stack([torch.randn(dim, generator=row_generator(s)) for s in seeds])


def sampling_uniforms(seeds: list[int], steps: int) -> torch.Tensor:
    """u (N, steps) ~ U(0, 1), float64, row i from its own generator seeded with seeds[i] ^ 0x5DEECE66D: a
    stream apart from the row's latent noise (seeded with seeds[i] itself), so changing the length limit never
    changes a latent code."""
    out = []
    for s in seeds:
        g = row_generator(s ^ 0x5DEECE66D)
        out.append(torch.rand(steps, generator=g, dtype=torch.float64))
    return torch.stack(out)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int = 0,
                  top_p: float = 1.0) -> torch.Tensor:
    """Temperature, then top-k, then nucleus (top-p) filtering; removed entries become -inf.

    logits (B, V). top_k = 0 and top_p = 1.0 disable those filters. Every row keeps at least its most likely
    token: a filter that removed them all would leave a row with no distribution (all -inf), from which
    inverse-CDF sampling returns an arbitrary id, outside any constraint already applied to the logits.
    """
    if temperature <= 0:
        raise ValueError("temperature must be > 0 (use greedy decoding instead)")
    if not 0 < top_p <= 1 or top_k < 0:
        raise ValueError(f"top_p must be in (0, 1] and top_k >= 0, got top_p={top_p}, top_k={top_k}")
    logits = logits / temperature
    if top_k and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        # Keep the smallest prefix whose mass reaches top_p (the first token always stays).
        remove = probs.cumsum(dim=-1) - probs >= top_p
        remove[:, 0] = False
        sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_from(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Inverse-CDF sampling: logits (B, V) already filtered, u (B,) uniforms -> token ids (B,)."""
    probs = logits.double().softmax(dim=-1)
    cdf = probs.cumsum(dim=-1)
    idx = torch.searchsorted(cdf, (u.to(cdf.dtype) * cdf[:, -1]).unsqueeze(-1)).squeeze(-1)
    return idx.clamp(max=logits.shape[-1] - 1)


@dataclass
class Decoded:
    tokens: list[list[int]]  # without <s> and </s>
    logprob: list[float]  # sum of log p(token) under the model, </s> included when emitted
    n_scored: list[int]  # tokens in that sum
    finish_reason: list[str]  # "eos", "length", or "cancelled" (stopped by the step hook)

    @property
    def score(self) -> list[float]:
        return [lp / max(n, 1) for lp, n in zip(self.logprob, self.n_scored)]


@torch.inference_mode()
def decode(model: CVAE, cond: torch.Tensor, z: torch.Tensor, max_len: int,
           strategy: Strategy = "greedy", temperature: float = 1.0, top_k: int = 0,
           top_p: float = 1.0, uniforms: torch.Tensor | None = None,
           banned: tuple[int, ...] = (PAD_ID, UNK_ID, BOS_ID),
           constraint: PieceConstraint | None = None,
           step_hook: Callable[[list[int], list[int]], Collection[int]] | None = None) -> Decoded:
    """Decode each row of (cond (B, Dc), z (B, Z)) until </s> or ``max_len`` tokens.

    ``banned`` ids are never emitted (padding, unknown, start; callers add the dialog marker).
    ``uniforms`` (B, max_len) drive sampling, one per row and step (see :func:`sampling_uniforms`).
    ``constraint`` (model.lexicon) masks the pieces that would write a word outside the decoding lexicon;
    scores stay the model's own log-probabilities (of the unconstrained distribution).
    Finished rows leave the batch, so the work tracks the rows still running. Each step reads the device once
    (the chosen tokens with their log-probabilities, see benchmarks/decode_step.py).
    ``step_hook(rows, tokens)``, when given, sees each step's running rows and the token each chose (</s>
    included) and returns the rows to stop now: they leave the batch with finish reason "cancelled" and that
    token not added (the engine drops the rows of a request nobody waits for; streaming reads the tokens).
    """
    banned_t = torch.tensor(sorted(set(banned)), dtype=torch.long, device=cond.device)
    B = cond.shape[0]
    device = cond.device
    state, _ = model.init_decoder(cond, z)
    rows = list(range(B))  # the rows still running, kept on the host: never read back from the device
    prev = torch.full((B,), BOS_ID, dtype=torch.long, device=device)
    tokens: list[list[int]] = [[] for _ in range(B)]
    logprob = [0.0] * B  # float64 sums, as Python floats: per-row tensor indexing costs more than the step
    n_scored = [0] * B
    finish = ["length"] * B
    if strategy == "sample":
        uniforms = (torch.rand(B, max_len, dtype=torch.float64) if uniforms is None else uniforms).to(device)
        active = torch.arange(B, device=device)  # rows, on the device: picks the running rows' uniforms
    words = [constraint.start() for _ in range(B)] if constraint is not None else []
    for t in range(max_len):
        logits, state = model.decode_step(prev, state)  # (b, V), (b, Hd)
        logits = logits.float().index_fill_(1, banned_t, float("-inf"))
        # log p(v) = logit_v - logsumexp(logits) for the chosen v only, but the fused log-softmax kernel is the
        # cheaper way to that reduction on a CPU (228 vs 362 us at (25, 8000): docs/benchmarks.md)
        logp = torch.log_softmax(logits, dim=-1)  # (b, V)
        pick = logits
        if constraint is not None:
            allowed = constraint.masks([words[r] for r in rows]).to(device)  # (b, V)
            allowed[:, EOS_ID] |= ~allowed.any(dim=1)  # a dead end (never seen in practice) may still stop
            pick = logits.masked_fill(~allowed, float("-inf"))
        if strategy == "greedy":
            nxt = pick.argmax(dim=-1)  # (b,)
        else:
            assert uniforms is not None
            nxt = sample_from(filter_logits(pick, temperature, top_k, top_p), uniforms[active, t])
        chosen = logp.gather(1, nxt.unsqueeze(1)).squeeze(1)  # (b,) log p under the unconstrained model
        # One read from the device per step: the tokens (exact as float64) with their log-probabilities. The
        # finished rows must be known now anyway: the constraint advances per token, and a finished row
        # leaves the batch at once (a later exit would change the batch shapes, and with them the rounding).
        toks_f, lps = torch.stack((nxt.double(), chosen.double())).cpu().tolist()
        toks = [int(x) for x in toks_f]
        stop = step_hook(rows, toks) if step_hook is not None else ()
        keep = []
        for j, (row, tok, lp) in enumerate(zip(rows, toks, lps)):
            if row in stop:
                finish[row] = "cancelled"
                continue
            logprob[row] += lp
            n_scored[row] += 1
            if tok == EOS_ID:
                finish[row] = "eos"
            else:
                tokens[row].append(tok)
                keep.append(j)
                if constraint is not None:
                    words[row] = constraint.advance(words[row], tok)
        if not keep:
            break
        if len(keep) < len(rows):
            rows = [rows[j] for j in keep]
            keep_t = torch.tensor(keep, device=device)
            state, nxt = state[keep_t], nxt[keep_t]
            if strategy == "sample":
                active = active[keep_t]
        prev = nxt
    return Decoded(tokens, logprob, n_scored, finish)
