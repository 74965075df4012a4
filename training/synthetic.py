"""The synthetic experiment of Fu et al. (NAACL 2019): a sequence VAE with a two-dimensional latent code trained on
ten short sequences under a monotonic and a cyclical KL schedule, with each sequence's posterior recorded as
training goes, so that one can watch the latent space divide among the sequences (or not).

The data: ``n_sequences`` sequences of ``length`` tokens, each token drawn uniformly from ``vocab_size`` ids (a
fixed seed). The model: an LSTM encoder whose final state gives q(z | x) = N(mu, diag(exp(logvar))) in 2-D; an
LSTM decoder that reads <s> x_1 ... x_{n-1}, its initial state a linear map of z, and predicts x_1 ... x_n. The
prior is N(0, I). Each step trains on all sequences at once with

    loss = rc + beta(t) * kl,  rc = -log p(x | z) summed over the tokens, kl = KL(q(z | x) || N(0, I)),

both in nats per sequence, z one reparameterised sample. Both schedules start from the same weights.

Why the experiment says something: the decoder sees x_{<t}, and once it has read x_1 the rest of a sequence is
determined, so z is needed only for the first token, worth log(n_sequences) nats. The decoder can therefore
do without z, and whether it does is what the schedule decides.

Measures, per snapshot: beta, kl and rc; the mutual information between the sequence index i and z under the
posteriors, I = E_i E_{z ~ q_i}[log q_i(z) - log (1/N) sum_j q_j(z)] (at most log N), estimated from fixed
samples; and the sequences that are *separated*: those whose posterior samples are assigned back to their own
sequence (the largest q_j(z)) at least 90 % of the time.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .cliargs import float_in, int_in, out_dir, seed
from .schedules import KINDS, ScheduleConfig, beta_at

log = logging.getLogger("training.synthetic")

BOS = 0  # the decoder's start symbol; sequence tokens are 1 .. vocab_size
SEPARATED_AT = 0.9


class SyntheticError(ValueError):
    """Settings the experiment cannot run with: one line for the CLI."""


@dataclass(frozen=True)
class SyntheticConfig:
    n_sequences: int = 10
    length: int = 10
    vocab_size: int = 1000
    embed_dim: int = 32
    hidden: int = 64
    latent_dim: int = 2
    steps: int = 6400
    cycles: int = 4  # M; the monotonic schedule rises over one cycle's length, T / M (as the dialog configs)
    ratio: float = 0.5  # R
    lr: float = 1e-3
    seed: int = 1
    snapshot_every: int = 100
    samples: int = 200  # posterior samples per sequence for the measures and the figures

    def __post_init__(self) -> None:
        for name in ("n_sequences", "length", "vocab_size", "embed_dim", "hidden", "latent_dim", "steps", "cycles",
                     "snapshot_every", "samples"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"synthetic: {name} must be a positive integer, got {getattr(self, name)!r}")
        if self.n_sequences < 2:
            raise ValueError("synthetic: n_sequences must be at least 2")
        if not 0.0 < self.ratio <= 1.0 or not self.lr > 0:
            raise ValueError("synthetic: ratio must lie in (0, 1] and lr be positive")

    def schedule(self, kind: str) -> ScheduleConfig:
        return ScheduleConfig(kind=kind, cycles=self.cycles, ratio=self.ratio,
                              warmup_steps=max(1, self.steps // self.cycles))


def make_sequences(cfg: SyntheticConfig) -> torch.Tensor:
    """(N, L) token ids in 1 .. vocab_size, uniform, from the config's seed."""
    g = torch.Generator().manual_seed(cfg.seed)
    return torch.randint(1, cfg.vocab_size + 1, (cfg.n_sequences, cfg.length), generator=g)


class SequenceVAE(nn.Module):
    def __init__(self, cfg: SyntheticConfig):
        super().__init__()
        self.embedding = nn.Embedding(cfg.vocab_size + 1, cfg.embed_dim)
        self.encoder = nn.LSTM(cfg.embed_dim, cfg.hidden, batch_first=True)
        self.posterior = nn.Linear(cfg.hidden, 2 * cfg.latent_dim)
        self.init = nn.Linear(cfg.latent_dim, 2 * cfg.hidden)  # z -> (h0, c0)
        self.decoder = nn.LSTM(cfg.embed_dim, cfg.hidden, batch_first=True)
        self.out = nn.Linear(cfg.hidden, cfg.vocab_size + 1)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        _, (h, _) = self.encoder(self.embedding(x))  # h (1, N, H)
        mu, logvar = self.posterior(h[0]).chunk(2, dim=-1)  # (N, Z) each
        return mu, logvar

    def nll(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """-log p(x | z) per sequence (N,), in nats: teacher-forced on <s> x_1 .. x_{n-1}."""
        inp = torch.cat([torch.full_like(x[:, :1], BOS), x[:, :-1]], dim=1)  # (N, L)
        h0, c0 = self.init(z).chunk(2, dim=-1)  # (N, H) each
        out, _ = self.decoder(self.embedding(inp), (h0.unsqueeze(0).contiguous(), c0.unsqueeze(0).contiguous()))
        logits = self.out(out)  # (N, L, V + 1)
        return F.cross_entropy(logits.transpose(1, 2), x, reduction="none").sum(dim=1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)  # (N,)
        return {"rc": self.nll(x, z).mean(), "kl": kl.mean(), "mu": mu, "logvar": logvar}


def posterior_measures(mu: torch.Tensor, logvar: torch.Tensor, samples: int, seed: int) -> dict[str, Any]:
    """Mutual information between sequence and z (nats, at most log N) and the separated sequences, from
    ``samples`` draws of each posterior q_i = N(mu_i, diag(exp(logvar_i))): mu, logvar (N, Z)."""
    n, dim = mu.shape
    g = torch.Generator().manual_seed(seed)
    std = (0.5 * logvar).exp()
    z = mu.unsqueeze(1) + std.unsqueeze(1) * torch.randn(n, samples, dim, generator=g, dtype=mu.dtype)  # (N, S, Z)
    flat = z.reshape(-1, 1, dim)  # (N*S, 1, Z)
    logq = (-0.5 * ((flat - mu) / std).pow(2) - 0.5 * logvar - 0.5 * math.log(2 * math.pi)).sum(-1)  # (N*S, N)
    own = torch.arange(n).repeat_interleave(samples)
    log_own = logq.gather(1, own.unsqueeze(1)).squeeze(1)
    mi = float((log_own - (torch.logsumexp(logq, dim=1) - math.log(n))).mean())
    others = logq.scatter(1, own.unsqueeze(1), float("-inf")).amax(dim=1)
    hits = (log_own > others).float().view(n, samples).mean(dim=1)  # (N,): a tie is not a hit
    return {"mi": mi, "mi_ceiling": math.log(n), "assigned": hits.tolist(),
            "separated": int((hits >= SEPARATED_AT).sum())}


def _snapshot(model: SequenceVAE, x: torch.Tensor, cfg: SyntheticConfig, step: int, beta: float) -> dict[str, Any]:
    """Measures over all sequences with fixed randomness (the training RNG is left alone)."""
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(cfg.seed + 7)
        mu, logvar = model.encode(x)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).sum(dim=-1)  # (N,)
        std = (0.5 * logvar).exp()
        rc = torch.stack([model.nll(x, mu + torch.randn_like(mu) * std) for _ in range(8)]).mean(0)  # (N,)
        rc_prior = torch.stack([model.nll(x, torch.randn_like(mu)) for _ in range(8)]).mean(0)
    return {"step": step, "beta": beta, "kl": float(kl.mean()), "rc": float(rc.mean()),
            "rc_from_prior": float(rc_prior.mean()), "mu": mu.tolist(), "logvar": logvar.tolist(),
            **posterior_measures(mu.double(), logvar.double(), cfg.samples, cfg.seed)}


def train_one(cfg: SyntheticConfig, kind: str, x: torch.Tensor) -> list[dict[str, Any]]:
    """Train a fresh model under one schedule; returns the snapshots (step 0, then every snapshot_every steps)."""
    torch.manual_seed(cfg.seed)
    model = SequenceVAE(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sched = cfg.schedule(kind)
    history = [_snapshot(model, x, cfg, 0, beta_at(1, cfg.steps, sched))]
    for t in range(1, cfg.steps + 1):
        beta = beta_at(t, cfg.steps, sched)
        out = model(x)
        loss = out["rc"] + beta * out["kl"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if t % cfg.snapshot_every == 0 or t == cfg.steps:
            history.append(_snapshot(model, x, cfg, t, beta))
    return history


def run(cfg: SyntheticConfig, out_dir: Path, kinds: tuple[str, ...] = ("monotonic", "cyclical"),
        animation: bool = True) -> dict[str, Any]:
    """Train each schedule, write history.json, summary.json and the figures into out_dir; returns the summary."""
    from . import synthetic_plots

    out_dir.mkdir(parents=True, exist_ok=True)
    x = make_sequences(cfg)
    histories, seconds = {}, {}
    for kind in kinds:
        t0 = time.perf_counter()
        histories[kind] = train_one(cfg, kind, x)
        seconds[kind] = round(time.perf_counter() - t0, 1)
        last = histories[kind][-1]
        log.info("%s: %.1f s; kl %.3f, rc %.3f, mi %.3f of %.3f, %d of %d separated", kind, seconds[kind],
                 last["kl"], last["rc"], last["mi"], last["mi_ceiling"], last["separated"], cfg.n_sequences)
    summary = {
        "config": asdict(cfg),
        "torch": torch.__version__,
        "train_seconds": seconds,
        "final": {k: {m: h[-1][m] for m in ("kl", "rc", "rc_from_prior", "mi", "mi_ceiling", "separated")}
                  for k, h in histories.items()},
        "separated_at": SEPARATED_AT,
    }
    (out_dir / "history.json").write_text(json.dumps({"sequences": x.tolist(), "histories": histories}) + "\n")
    summary["figures"] = synthetic_plots.write_figures(histories, cfg, out_dir, animation=animation)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser(p: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = p or argparse.ArgumentParser(prog="python -m training.synthetic", description=__doc__.splitlines()[0])
    d = SyntheticConfig()
    p.add_argument("--out", required=True, type=out_dir, help="folder for history.json, summary.json, latent.png, curves.png, "
                                                "latent.gif")
    p.add_argument("--steps", type=int_in(1, 1_000_000), default=d.steps, help=f"default {d.steps}")
    p.add_argument("--cycles", type=int_in(1, 1000), default=d.cycles, help=f"M (default {d.cycles}; at most --steps)")
    p.add_argument("--ratio", type=float_in(0, 1, above=True), default=d.ratio,
                   help=f"R, the part of a cycle spent rising (default {d.ratio:g})")
    p.add_argument("--seed", type=seed, default=d.seed)
    p.add_argument("--snapshot-every", type=int_in(1, 1_000_000), default=d.snapshot_every,
                   help=f"steps between snapshots (default {d.snapshot_every})")
    p.add_argument("--schedules", type=_schedules, default=("monotonic", "cyclical"),
                   help="comma-separated: constant, monotonic, cyclical (default monotonic,cyclical)")
    p.add_argument("--no-animation", dest="animation", action="store_false", help="skip latent.gif")
    return p


def _schedules(text: str) -> tuple[str, ...]:
    kinds = tuple(dict.fromkeys(k.strip() for k in text.split(",") if k.strip()))
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown schedule(s) {', '.join(bad) or '(none)'}; "
                                         f"choose from {', '.join(KINDS)}")
    return kinds


def main_args(args: argparse.Namespace) -> int:
    """Run the experiment as parsed by :func:`build_parser`; SyntheticError for settings it cannot run with."""
    torch.set_num_threads(1)  # a batch of ten short sequences: more threads only add overhead
    if args.cycles > args.steps:
        raise SyntheticError(f"synthetic: --cycles ({args.cycles}) must be at most --steps ({args.steps})")
    try:
        cfg = SyntheticConfig(steps=args.steps, cycles=args.cycles, ratio=args.ratio, seed=args.seed,
                              snapshot_every=args.snapshot_every)
    except ValueError as e:
        raise SyntheticError(str(e)) from None
    summary = run(cfg, Path(args.out), args.schedules, animation=args.animation)
    log.info("wrote %s: %s", args.out, ", ".join(summary["figures"].values()))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return main_args(args)
    except SyntheticError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
