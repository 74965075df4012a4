"""The cost model of one request: time and FLOPs by stage of the reply pipeline, and the fraction of the matmul
peak each stage reaches.

    python -m benchmarks.request_cost                       # the shipped model, the service's defaults, n = 5
    python -m benchmarks.request_cost --threads 1,2 --contexts 40 --json out.json
    python -m benchmarks.request_cost --no-rerank           # the pipeline without reranking
    python -m benchmarks.request_cost --quantize none,bf16  # precisions side by side (model.quantize)

Each context goes through model.pipeline.ReplyPipeline.run (a request on its own, the service's path for one
request) with every stage timed: prepare (normalise, tokenise, check), encode (context encoder and prior),
latents (the row seeds' noise), decode (the decode loop; within it the model's step, the lexicon's masks and
the rest: the log-softmax, the choice, the host loop), anti-LM (the probe contexts' teacher-forced pass) and
choose (scores and maximal marginal relevance). Time is wall time per request, the median over the contexts.

FLOPs count the matrix products on real positions only (2 per multiply-add): the GRU cells (3 gates, input and
recurrent products) and the vocabulary projection (2 H V per position), the MLPs of the prior; the
log-softmax and the masks are counted as not matmul work (0). The peak is fp32 torch.matmul of two
2048 x 2048 matrices at the same thread count, measured in the same run. The contexts are chitchat
validation contexts when ../shared/data holds the corpus (the first of training.quality's fixed-seed sample),
else a fixed list.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import torch

from model.bundle import DEFAULT_BUNDLE, load_bundle
from model.config import CVAEConfig
from model.pipeline import GenerationRequest, ReplyPipeline, ReplySettings
from model.quantize import MODES, quantize_decoder

from .common import matmul_peak, print_header, table, write_json

FALLBACK = [["Hi, how are you today?"], ["I just got back from the beach.", "Nice! How was it?", "Sunny and hot."],
            ["What do you do for a living?"], ["Do you like dogs or cats?"], ["I failed my exam today."],
            ["Any plans for the weekend?"], ["Have you seen any good movies lately?"], ["I love pizza."]]
STAGES = ("prepare", "encode", "latents", "decode", "decode.model_step", "decode.lexicon_masks", "decode.rest",
          "anti_lm", "choose")


def gru_flops(inp: int, hidden: int) -> int:
    """One GRU step of one row: input and recurrent products of the three gates."""
    return 2 * 3 * (inp + hidden) * hidden


class Counted(ReplyPipeline):
    """The pipeline with each stage timed and its work counted (positions through the decoder)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.times: dict[str, float] = defaultdict(float)
        self.work: dict[str, int] = defaultdict(int)
        model = self.bundle.model
        step, antilm = model.decode_step, self.anti_lm.logprob
        constraint = self.constraint

        def timed_step(tokens: torch.Tensor, state: torch.Tensor) -> Any:
            t = time.perf_counter()
            out = step(tokens, state)
            self.times["decode.model_step"] += time.perf_counter() - t
            self.work["decode_positions"] += int(tokens.shape[0])
            return out

        def timed_antilm(tokens: list[list[int]]) -> list[float]:
            t = time.perf_counter()
            out = antilm(tokens)
            self.times["anti_lm"] += time.perf_counter() - t
            distinct = {tuple(x) for x in tokens if x}
            self.work["anti_lm_positions"] += sum(len(x) + 1 for x in distinct) * len(self.anti_lm.cond) \
                if self.anti_lm.kind == "probes" else 0
            return out

        model.decode_step = timed_step  # type: ignore[method-assign]
        self.anti_lm.logprob = timed_antilm  # type: ignore[method-assign]
        if constraint is not None:
            masks = constraint.masks

            def timed_masks(states: Any) -> torch.Tensor:
                t = time.perf_counter()
                out = masks(states)
                self.times["decode.lexicon_masks"] += time.perf_counter() - t
                return out

            constraint.masks = timed_masks  # type: ignore[method-assign]

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t = time.perf_counter()
        yield
        self.times[name] += time.perf_counter() - t

    def encode(self, jobs: Any) -> None:
        with self.stage("encode"):
            super().encode(jobs)
        self.work["context_tokens"] += sum(len(t) for j in jobs for t in j.context[0])  # what the encoder reads
        self.work["context_turns"] += sum(len(j.context[0]) for j in jobs)

    def rows(self, job: Any) -> Any:
        with self.stage("latents"):
            return super().rows(job)

    def decode(self, key: Any, rows: Any) -> None:
        before = self.times["anti_lm"]
        t = time.perf_counter()
        super().decode(key, rows)
        self.times["decode"] += time.perf_counter() - t - (self.times["anti_lm"] - before)

    def result(self, job: Any) -> Any:
        with self.stage("choose"):
            return super().result(job)


def flops(cfg: CVAEConfig, work: dict[str, int]) -> dict[str, float]:
    dec = gru_flops(cfg.embed_dim, cfg.dec_hidden) + 2 * cfg.dec_hidden * cfg.vocab_size
    enc = 2 * gru_flops(cfg.embed_dim, cfg.utt_hidden) * work["context_tokens"] \
        + gru_flops(cfg.utt_dim + 2, cfg.ctx_hidden) * work["context_turns"] \
        + 2 * (cfg.cond_dim * cfg.prior_hidden + cfg.prior_hidden * 2 * cfg.latent_dim)
    return {"encode": float(enc), "decode": float(dec * work["decode_positions"]),
            "decode.model_step": float(dec * work["decode_positions"]),
            "anti_lm": float(dec * work["anti_lm_positions"])}


def contexts(k: int) -> tuple[list[list[str]], str]:
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "chitchat"
    if data.is_dir():
        from training.data import Source, read_sources
        from training.quality import contexts_of

        items = contexts_of(read_sources([Source("chitchat", str(data))], "valid"), k, seed=1)
        return [it["context"] for it in items], "chitchat valid (training.quality's sample, seed 1)"
    return (FALLBACK * (k // len(FALLBACK) + 1))[:k], "a fixed list of 8 contexts"


def measure(bundle_dir: Path, ctxs: list[list[str]], threads: int, rerank: bool, n: int,
            quantize: str = "none") -> dict[str, Any]:
    torch.set_num_threads(threads)
    bundle = load_bundle(bundle_dir)
    quantize_decoder(bundle.model, quantize)
    pipe = Counted(bundle, ReplySettings(rerank=rerank))
    per: dict[str, list[float]] = defaultdict(list)
    total: list[float] = []
    replies: list[list[str]] = []
    pipe.respond(GenerationRequest(context=ctxs[0], n=n, seed=0))  # warm-up
    for i, ctx in enumerate(ctxs):
        pipe.times.clear()
        pipe.work.clear()
        t = time.perf_counter()
        with pipe.stage("prepare"):
            job = pipe.prepare(GenerationRequest(context=ctx, n=n, seed=1000 + i))
        result = pipe.run(job)
        total.append(time.perf_counter() - t)
        replies.append([r.text for r in result.replies])
        pipe.times["decode.rest"] = pipe.times["decode"] - pipe.times["decode.model_step"] \
            - pipe.times["decode.lexicon_masks"]
        f = flops(bundle.config, pipe.work)
        for s in STAGES:
            per[s].append(pipe.times[s])
            per[f"flops.{s}"].append(f.get(s, 0.0))
        per["rows"].append(float(job.next_index))
        per["decode_positions"].append(float(pipe.work["decode_positions"]))
        per["anti_lm_positions"].append(float(pipe.work["anti_lm_positions"]))
    peak = matmul_peak() * 1e9  # FLOP/s
    med = statistics.median
    out: dict[str, Any] = {"threads": threads, "quantize": quantize, "rerank": rerank, "n": n,
                           "contexts": len(ctxs), "replies": replies,
                           "total_ms_p50": 1000 * med(total), "total_ms_mean": 1000 * statistics.fmean(total),
                           "peak_gflops": peak / 1e9, "rows_mean": statistics.fmean(per["rows"]),
                           "decode_positions_mean": statistics.fmean(per["decode_positions"]),
                           "anti_lm_positions_mean": statistics.fmean(per["anti_lm_positions"]), "stages": []}
    mean_total = statistics.fmean(total)
    for s in STAGES:
        t_mean = statistics.fmean(per[s])
        f_mean = statistics.fmean(per[f"flops.{s}"])
        out["stages"].append({"stage": s, "ms_mean": 1000 * t_mean, "share": t_mean / mean_total,
                              "gflop": f_mean / 1e9, "of_peak": (f_mean / t_mean / peak) if t_mean and f_mean else 0.0})
    flops_total = sum(statistics.fmean(per[f"flops.{s}"]) for s in ("encode", "decode", "anti_lm"))
    out["gflop_total"] = flops_total / 1e9
    out["floor_ms_at_peak"] = 1000 * flops_total / peak
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--bundle", default=str(DEFAULT_BUNDLE))
    p.add_argument("--contexts", type=int, default=40)
    p.add_argument("--threads", default="1", help="comma-separated torch thread counts")
    p.add_argument("-n", type=int, default=5)
    p.add_argument("--no-rerank", dest="rerank", action="store_false")
    p.add_argument("--quantize", default="none", help=f"comma-separated precisions of the decoder, each measured "
                                                       f"in turn: {', '.join(MODES)} (model.quantize)")
    p.add_argument("--json", help="write the results here")
    args = p.parse_args(argv)
    modes = args.quantize.split(",")
    if any(m not in MODES for m in modes):
        p.error(f"--quantize takes comma-separated values of {', '.join(MODES)}, got {args.quantize!r}")
    if args.contexts < 1 or args.n < 1:
        p.error("--contexts and -n must be at least 1")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        p.error(f"--threads takes comma-separated integers, got {args.threads!r}")
    ctxs, source = contexts(args.contexts)
    meta = print_header("request cost by stage", {"bundle": args.bundle, "contexts": f"{len(ctxs)} ({source})",
                                                  "n": args.n, "rerank": args.rerank, "threads": threads,
                                                  "quantize": modes})
    results = []
    for th, mode in [(th, m) for th in threads for m in modes]:
        try:
            r = measure(Path(args.bundle), ctxs, th, args.rerank, args.n, mode)
        except ValueError as e:  # this precision cannot run here (model.quantize says why)
            print(f"\n{th} thread(s), {mode}: skipped: {e}")
            continue
        results.append(r)
        same = ""
        if mode != modes[0] and results[0]["threads"] == th and results[0]["quantize"] == modes[0]:
            base = next(x for x in results if x["threads"] == th and x["quantize"] == modes[0])
            changed = sum(a != b for a, b in zip(base["replies"], r["replies"]))
            r["requests_with_other_replies"] = changed
            same = f"; replies differ from {modes[0]}'s in {changed} of {len(ctxs)} requests"
        print(f"\n{th} thread(s), {mode}: p50 {r['total_ms_p50']:.1f} ms, mean {r['total_ms_mean']:.1f} ms per request; "
              f"{r['rows_mean']:.1f} rows, {r['decode_positions_mean']:.0f} decoder positions, "
              f"{r['anti_lm_positions_mean']:.0f} anti-LM positions; {r['gflop_total']:.2f} GFLOP, "
              f"floor at the matmul peak ({r['peak_gflops']:.0f} GFLOP/s) {r['floor_ms_at_peak']:.1f} ms{same}")
        rows = [{**s, "ms_mean": f"{s['ms_mean']:.2f}", "share": f"{100 * s['share']:.1f} %",
                 "gflop": f"{s['gflop']:.3f}", "of_peak": f"{100 * s['of_peak']:.0f} %" if s["of_peak"] else "-"}
                for s in r["stages"]]
        print(table(rows, ["stage", "ms_mean", "share", "gflop", "of_peak"]))
    write_json(args.json, {**meta, "results": results})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
