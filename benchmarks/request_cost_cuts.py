"""The serving issue's cuts, each measured in the same run as its baseline, with how many requests get other
replies than the baseline's (a cut that changes them needs a blind round before it becomes the default).

    python -m benchmarks.request_cost_cuts --contexts 40 --json docs/results/bench/request-cost-cuts.json

Variants (benchmarks.request_cost.measure: one request at a time through model.pipeline, every stage timed):
the anti-LM's log p as logit - logsumexp (the code before the cut, kept here as the baseline), the fused
log-softmax (the code now), the bf16 vocabulary projection and the int8 decoder (model.quantize), at one
torch thread, and the code now and bf16 at two.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from model.bundle import DEFAULT_BUNDLE
from model.config import BOS_ID, EOS_ID, PAD_ID
from model.cvae import CVAE

from . import request_cost as rc
from .common import print_header, write_json

NOW = CVAE.sequence_logprob


def logsumexp_sequence_logprob(self: CVAE, cond: torch.Tensor, z: torch.Tensor, tokens: list[list[int]]) -> list[float]:
    """CVAE.sequence_logprob as it was before the cut: log p = logit - logsumexp(logits)."""
    B = len(tokens)
    T = max(len(t) for t in tokens) + 1
    inp = torch.full((B, T), PAD_ID, dtype=torch.long)
    tgt = torch.full((B, T), PAD_ID, dtype=torch.long)
    for i, t in enumerate(tokens):
        inp[i, :len(t) + 1] = torch.tensor([BOS_ID, *t])
        tgt[i, :len(t) + 1] = torch.tensor([*t, EOS_ID])
    state, _ = self.init_decoder(cond, z)
    out, _ = self.decoder.rnn(*self.rnn_inputs(self.embedding(inp), state))
    real = (tgt != PAD_ID).reshape(-1).nonzero().squeeze(1)
    logits = self.decoder.out(out.reshape(B * T, -1).index_select(0, real)).float()
    picked = logits.gather(1, tgt.reshape(-1).index_select(0, real).unsqueeze(1)).squeeze(1)
    tok = (picked - torch.logsumexp(logits, dim=1)).double()
    row = torch.arange(B).repeat_interleave(T).index_select(0, real)
    return torch.zeros(B, dtype=torch.float64).index_add_(0, row, tok).tolist()


VARIANTS: list[tuple[str, int, str, Any]] = [
    ("fp32, logsumexp (before)", 1, "none", logsumexp_sequence_logprob),
    ("fp32, log_softmax", 1, "none", NOW), ("bf16 projection", 1, "bf16", NOW), ("int8 decoder", 1, "int8", NOW),
    ("fp32, log_softmax", 2, "none", NOW), ("bf16 projection", 2, "bf16", NOW)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--json", help="write the results (and every reply) here")
    args = p.parse_args(argv)
    if args.contexts < 1:
        p.error("--contexts must be at least 1")
    ctxs, source = rc.contexts(args.contexts)
    meta = print_header("request cost: the serving issue's cuts", {"bundle": args.bundle,
                                                                    "contexts": f"{len(ctxs)} ({source})"})
    results: list[dict[str, Any]] = []
    try:
        for name, threads, mode, seq_logprob in VARIANTS:
            CVAE.sequence_logprob = seq_logprob  # type: ignore[method-assign]
            try:
                r = rc.measure(Path(args.bundle), ctxs, threads, True, 5, mode)
            except ValueError as e:  # a precision this machine cannot run (model.quantize says why)
                print(f"{name} ({threads} thread(s)): skipped: {e}")
                continue
            r["variant"] = name
            if results:
                r["requests_with_other_replies"] = sum(a != b for a, b in zip(results[0]["replies"], r["replies"]))
            results.append(r)
            st = {s["stage"]: s["ms_mean"] for s in r["stages"]}
            print(f"{name:26s} {threads} thread(s): p50 {r['total_ms_p50']:.1f} ms, anti-LM {st['anti_lm']:.1f} ms, "
                  f"decode {st['decode']:.1f} ms, other replies than the first variant's: "
                  f"{r.get('requests_with_other_replies', '-')} of {len(ctxs)}", flush=True)
    finally:
        CVAE.sequence_logprob = NOW  # type: ignore[method-assign]
    write_json(args.json, {**meta, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
