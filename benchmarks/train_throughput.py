"""Training throughput: batches/s, response and context tokens/s, and useful FLOP/s against the matmul peak.

    python -m benchmarks.train_throughput --config swda-cyclical --steps 30
    python -m benchmarks.train_throughput --config dailydialog-cyclical --steps 30

Each variant runs the training loop's step (forward, backward, gradient clipping, Adam) on the configured
corpus, model and batch size, for ``--warmup`` untimed steps and then ``--steps`` timed ones, from the same
data stream position:

    optimized   the project's training step: batches bucketed by response length (train.bucket=true),
                the recurrent layers and the vocabulary loss of model.recurrent (input projections of a
                sequence in one product, an analytic GRU cell, chunked linear + cross-entropy)
    reference   the same batches through nn.GRU on packed sequences and full logits on real positions
                (CVAE.use_reference_path: the training step before model.recurrent)
    unbucketed  the same step on shuffled, unsorted batches (train.bucket=false)
    padded      the plain baseline: unsorted batches, and the decoder run over the padded length with the
                vocabulary projection on every position, padding included (loss masked), as a direct port does

"Useful work" counts the matrix products of the model on real tokens only (see :func:`batch_flops`), forward
plus backward (x3), so every variant is credited with the same FLOPs for the same batch; the matmul peak is
fp32 torch.matmul of two 2048 x 2048 matrices, measured in the same run.
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from model.config import PAD_ID, UNK_ID, CVAEConfig
from model.cvae import CVAE, Batch, gaussian_kl

from .common import matmul_peak, print_header, table, write_json

VARIANTS = ("optimized", "reference", "unbucketed", "padded")


def gru_flops(n_in: int, hidden: int) -> int:
    """Multiply-adds x 2 of one GRU step for one row: input projection (3H x in) and hidden projection (3H x H)."""
    return 2 * 3 * hidden * (n_in + hidden)


def linear_flops(n_in: int, n_out: int) -> int:
    return 2 * n_in * n_out


def batch_flops(cfg: CVAEConfig, batch: Batch) -> dict[str, int]:
    """Forward FLOPs of the model's matrix products on a batch's real tokens, by part.

    Utterance encoder (both directions) on every real context token and every response token (the
    recognition network encodes the response); context encoder on every real turn; decoder GRU and
    vocabulary projection on every decoder input position (response length - 1); the per-example linear
    layers (prior, recognition, decoder init, bag-of-words, act predictor)."""
    ctx_tokens = int(batch.ctx_lens.sum())
    resp_tokens = int(batch.resp_lens.sum())
    dec_steps = int((batch.resp_lens - 1).sum())
    turns = int(batch.ctx_turns.sum())
    B = batch.size
    utt_step = 2 * gru_flops(cfg.embed_dim, cfg.utt_hidden)
    act = cfg.act_dim if cfg.kgcvae else 0
    per_example = (linear_flops(cfg.cond_dim, cfg.prior_hidden) + linear_flops(cfg.prior_hidden, 2 * cfg.latent_dim)
                   + linear_flops(cfg.cond_dim + cfg.utt_dim + act, 2 * cfg.latent_dim)
                   + linear_flops(cfg.cond_dim + cfg.latent_dim + act, cfg.dec_hidden)
                   + linear_flops(cfg.cond_dim + cfg.latent_dim, cfg.bow_hidden)
                   + linear_flops(cfg.bow_hidden, cfg.vocab_size))
    if cfg.kgcvae:
        per_example += (linear_flops(cfg.cond_dim + cfg.latent_dim, cfg.bow_hidden)
                        + linear_flops(cfg.bow_hidden, cfg.n_acts))
    step_act = cfg.act_dim if cfg.zhao_kgcvae else 0  # Zhao's kgCVAE feeds the act at every decoder step
    if step_act:
        per_example += linear_flops(cfg.act_dim, cfg.act_dim)  # the recognition network's tanh layer on e(y)
    return {
        "utt_encoder": utt_step * (ctx_tokens + resp_tokens),
        "ctx_encoder": turns * gru_flops(cfg.utt_dim + 2, cfg.ctx_hidden),
        "decoder_gru": dec_steps * gru_flops(cfg.embed_dim + step_act, cfg.dec_hidden),
        "vocab_projection": dec_steps * linear_flops(cfg.dec_hidden, cfg.vocab_size),
        "mlps": B * per_example,
    }


def padded_forward(model: CVAE, batch: Batch) -> dict[str, torch.Tensor]:
    """The loss terms of :meth:`CVAE.forward`, computed as a direct port does: the decoder runs over the
    padded length and every position, padding included, goes through the vocabulary projection; the loss
    is masked afterwards. Same model, same parameters, more work."""
    cfg = model.cfg
    cond = model.encode(batch)
    mu_p, logvar_p = model.prior(cond)
    mu_q, logvar_q = model.posterior(cond, batch)
    z = mu_q + torch.randn_like(mu_q) * (0.5 * logvar_q).exp()
    state, act_logits = model.init_decoder(cond, z, batch.acts if cfg.kgcvae else None)
    inputs, targets = batch.resp_tokens[:, :-1], batch.resp_tokens[:, 1:]
    if cfg.word_dropout > 0:
        drop = torch.rand(inputs.shape) < cfg.word_dropout
        drop[:, 0] = False
        inputs = inputs.masked_fill(drop & (inputs != PAD_ID), UNK_ID)
    out, _ = model.decoder.rnn(*model.rnn_inputs(model.dropout(model.embedding(inputs)), state))
    logits = model.decoder.out(model.dropout(out))  # (B, T-1, V): padding positions too
    mask = targets != PAD_ID
    tok_nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                              reduction="none").view_as(targets) * mask
    rc_nll_sum = tok_nll.sum()
    B = batch.size
    bow_logp = F.log_softmax(model.bow(torch.cat([cond, z], dim=-1)), dim=-1)
    bow_nll = -(bow_logp.gather(1, targets) * mask).sum(dim=1)
    losses = {"rc_loss": rc_nll_sum / B, "kl": gaussian_kl(mu_q, logvar_q, mu_p, logvar_p).mean(),
              "bow_loss": bow_nll.mean(), "rc_nll_sum": rc_nll_sum.detach(), "n_tokens": mask.sum()}
    if cfg.kgcvae:
        act_mask = batch.acts > 0
        act_nll = F.cross_entropy(act_logits, batch.acts, reduction="none")
        losses["act_loss"] = (act_nll * act_mask).sum() / act_mask.sum().clamp(min=1)
    else:
        losses["act_loss"] = rc_nll_sum.new_zeros(())
    return losses


def _trainer(config: str, overrides: list[str], work: Path) -> Any:
    from training.config import load_config
    from training.loop import Trainer

    path = config if config.endswith((".toml", ".yaml", ".yml")) else f"{config}.toml"
    cfg = load_config(path, ["train.device=cpu", *overrides])
    out = work / cfg.name  # the tokenizer is trained once and reused from here
    trainer = Trainer(cfg, out)
    trainer.prepare()
    return trainer


def run_variant(trainer: Any, variant: str, warmup: int, steps: int) -> dict[str, Any]:
    """Time ``steps`` training steps of ``variant`` after ``warmup`` untimed ones, from a fresh model."""
    from training.batching import BatchStream
    from training.schedules import beta_at, lr_at

    cfg = trainer.cfg
    lc = cfg.train
    torch.manual_seed(lc.seed)
    model = CVAE(trainer.model.cfg).use_reference_path(variant in ("reference", "padded"))
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lc.lr)
    stream = BatchStream(trainer.train_set, lc.seed, lc.batch_size, bucket=variant in ("optimized", "reference"))
    forward = padded_forward if variant == "padded" else model.forward
    total = warmup + steps
    flops: dict[str, int] = {}
    n_resp = n_ctx = 0
    elapsed = data_s = 0.0
    for i in range(total):
        t = i + 1
        beta = beta_at(t, lc.steps, cfg.schedule)
        for g in opt.param_groups:
            g["lr"] = lr_at(t, lc.steps, lc.lr, cfg.schedule)
        t0 = time.perf_counter()
        batch = trainer.train_set.batch(stream.indices(i))
        t_data = time.perf_counter() - t0
        out = forward(model, batch) if variant == "padded" else forward(batch)
        loss = out["rc_loss"] + beta * out["kl"] + out["bow_loss"] + out["act_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), lc.grad_clip)
        opt.step()
        float(loss.detach())  # the loop reads its sums every log step; here every step, to end the timing honestly
        dt = time.perf_counter() - t0
        if i >= warmup:
            elapsed += dt
            data_s += t_data
            for k, v in batch_flops(model.cfg, batch).items():
                flops[k] = flops.get(k, 0) + v
            n_resp += int((batch.resp_lens - 1).sum())
            n_ctx += int(batch.ctx_lens.sum())
    fwd = sum(flops.values())
    return {"variant": variant, "steps": steps, "seconds": elapsed, "batches_per_s": steps / elapsed,
            "resp_tokens_per_s": n_resp / elapsed, "ctx_tokens_per_s": n_ctx / elapsed,
            "gflop_per_batch": 3 * fwd / steps / 1e9, "useful_gflops": 3 * fwd / elapsed / 1e9,
            "data_fraction": data_s / elapsed, "flop_share": {k: v / fwd for k, v in flops.items()}}


def profile_step(trainer: Any, steps: int = 3) -> str:
    """torch.profiler table of a few optimized steps: where a step's time goes."""
    from torch.profiler import ProfilerActivity, profile

    model = CVAE(trainer.model.cfg)
    model.train()
    opt = torch.optim.Adam(model.parameters())
    stream_batches = [trainer.train_set.batch(trainer.stream.indices(i)) for i in range(steps + 1)]
    def step(batch: Batch) -> None:
        out = model(batch)
        loss = out["rc_loss"] + out["kl"] + out["bow_loss"] + out["act_loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    step(stream_batches[0])
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for b in stream_batches[1:]:
            step(b)
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.train_throughput", description=__doc__.split("\n")[0])
    p.add_argument("--config", default="swda-cyclical", help="training config (name in training/configs or path)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--steps", type=int, default=30, help="timed steps per variant")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated: {', '.join(VARIANTS)}")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--work", default=str(Path(tempfile.gettempdir()) / "cvae-bench"),
                   help="folder for the cached tokenizer")
    p.add_argument("--profile", action="store_true", help="also print a torch.profiler table of the optimized step")
    p.add_argument("--batch-sizes", default="",
                   help="also time the optimized step at these batch sizes (comma-separated): tokens/s against batch size")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            p.error(f"unknown variant {v!r}")
    trainer = _trainer(args.config, args.set, Path(args.work))
    mc = trainer.model.cfg
    run_cfg = {"config": args.config, "overrides": " ".join(args.set) or "-", "batch_size": trainer.cfg.train.batch_size,
               "steps": args.steps, "warmup": args.warmup, "threads": torch.get_num_threads(),
               **{k: getattr(mc, k) for k in ("vocab_size", "embed_dim", "utt_hidden", "ctx_hidden",
                                              "latent_dim", "dec_hidden", "kgcvae", "n_topics", "meta_dim")},
               "train_examples": len(trainer.train_set)}
    info = print_header("training throughput", run_cfg)
    peak = matmul_peak()
    peak_bf16 = matmul_peak(dtype=torch.bfloat16)
    print(f"matmul peak (2048x2048): fp32 {peak:.1f} GFLOP/s, bf16 {peak_bf16:.1f} GFLOP/s", flush=True)
    rows = []
    for v in variants:
        r = run_variant(trainer, v, args.warmup, args.steps)
        r["peak_fraction"] = r["useful_gflops"] / peak
        rows.append(r)
        print(f"{v}: {r['batches_per_s']:.3f} batches/s, {r['resp_tokens_per_s']:.0f} resp tok/s, "
              f"{r['useful_gflops']:.1f} useful GFLOP/s ({100 * r['peak_fraction']:.0f}% of peak)", flush=True)
    base = next((r for r in rows if r["variant"] == "padded"), None)
    for r in rows:
        r["speedup_vs_padded"] = r["batches_per_s"] / base["batches_per_s"] if base else float("nan")
    print()
    print(table(rows, ["variant", "batches_per_s", "resp_tokens_per_s", "ctx_tokens_per_s", "gflop_per_batch",
                       "useful_gflops", "peak_fraction", "speedup_vs_padded"]))
    share = rows[0]["flop_share"]
    print("\nFLOP share (forward, real tokens): " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in share.items()))
    print("batch collation (data pipeline) share of the step: "
          + ", ".join(f"{r['variant']} {100 * r['data_fraction']:.1f}%" for r in rows))
    by_batch = []
    for size in (int(b) for b in args.batch_sizes.split(",") if b.strip()):
        t = _trainer(args.config, [*args.set, f"train.batch_size={size}"], Path(args.work))
        r = run_variant(t, "optimized", args.warmup, args.steps)
        by_batch.append({"batch_size": size, **{k: r[k] for k in ("batches_per_s", "resp_tokens_per_s",
                         "ctx_tokens_per_s", "useful_gflops", "data_fraction")}, "peak_fraction": r["useful_gflops"] / peak})
    if by_batch:
        print("\noptimized step against the batch size:")
        print(table(by_batch, ["batch_size", "batches_per_s", "resp_tokens_per_s", "ctx_tokens_per_s", "useful_gflops",
                               "peak_fraction", "data_fraction"]))
    prof = profile_step(trainer) if args.profile else None
    if prof:
        print("\n" + prof)
    write_json(args.json, {"machine": info, "config": run_cfg, "matmul_peak_gflops": peak,
                           "matmul_peak_bf16_gflops": peak_bf16, "results": rows, "by_batch_size": by_batch,
                           "profile": prof})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
