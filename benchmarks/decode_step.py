"""The decode loop alone: time per step and host reads per step, for a few batch sizes.

    python -m benchmarks.decode_step                     # the shipped model, 5 and 25 rows, one torch thread
    python -m benchmarks.decode_step --rows 1,5,25,64 --repeats 50 --json out.json

Rows are the served default's: one context, prior latent codes at the default latent temperature from seeds
0..B-1, greedy decoding with the bundle's lexicon constraint (and without it, and sampling with it). A step
is one pass of the loop (one token for every row still running), so ms/step = a call's wall time / its steps
(the longest row's scored tokens); the figure is the median over ``--repeats`` calls.

Host reads count the places where the loop brings a tensor's values back to Python (``tolist``, ``item``,
``bool``/``int``/``float`` of a tensor, ``numpy``; ``.cpu()`` is counted apart): on a GPU each one waits for
the device, on a CPU each costs a conversion. They are counted with a TorchFunctionMode (harness.probes), so they do not
depend on the machine's load, unlike the times.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch

from model import decoding
from model.bundle import DEFAULT_BUNDLE, Bundle, load_bundle
from model.config import BOS_ID, PAD_ID, UNK_ID
from model.inputs import encode_contexts
from model.lexicon import PieceConstraint
from model.rerank import DEFAULT_LATENT_TEMPERATURE

from harness.probes import HostReads

from .common import print_header, table, write_json

CONTEXT = ["Hi, how are you doing today?", "Not bad. Any plans for the weekend?"]
def setup(bundle: Bundle, rows: int, lexicon: bool) -> dict[str, Any]:
    banned = (PAD_ID, UNK_ID, BOS_ID, bundle.tokenizer.dialog_start_id)
    constraint = PieceConstraint(bundle.lexicon, bundle.tokenizer.sp, banned) if lexicon and bundle.lexicon else None
    with torch.inference_mode():
        cond, mu, std = encode_contexts(bundle, [CONTEXT])
        eps = decoding.latent_noise(list(range(rows)), bundle.config.latent_dim)
        z = mu + DEFAULT_LATENT_TEMPERATURE * std * eps  # (rows, Z)
    return {"bundle": bundle, "banned": banned, "constraint": constraint, "cond": cond.expand(rows, -1), "z": z,
            "uniforms": decoding.sampling_uniforms(list(range(rows)), bundle.config.max_decode_len)}


def measure(s: dict[str, Any], strategy: str, repeats: int) -> dict[str, Any]:
    b = s["bundle"]

    def run() -> decoding.Decoded:
        return decoding.decode(b.model, s["cond"], s["z"], b.config.max_decode_len, strategy=strategy,
                               uniforms=s["uniforms"] if strategy == "sample" else None, banned=s["banned"],
                               constraint=s["constraint"])

    out = run()  # warm-up
    steps = max(out.n_scored)
    with HostReads() as counter:
        run()
    per_step = []
    for _ in range(repeats):
        t = time.perf_counter()
        run()
        per_step.append((time.perf_counter() - t) / steps)
    return {"steps": steps, "ms_per_step": 1000 * statistics.median(per_step),
            "ms_per_step_min": 1000 * min(per_step), "host_reads_per_step": counter.reads / steps,
            "cpu_calls_per_step": counter.calls["cpu"] / steps,
            "tokens": out.tokens, "logprob": out.logprob}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bundle", default=None, help="a bundle folder (default: the shipped model)")
    p.add_argument("--rows", default="5,25", help="batch sizes, comma-separated")
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    info = print_header("decode step", vars(args))
    bundle = load_bundle(args.bundle or DEFAULT_BUNDLE, torch.device("cpu"))
    results = []
    for rows in (int(r) for r in args.rows.split(",")):
        for strategy, lexicon in (("greedy", True), ("greedy", False), ("sample", True)):
            r = measure(setup(bundle, rows, lexicon), strategy, args.repeats)
            results.append({"rows": rows, "strategy": strategy, "lexicon": lexicon,
                            **{k: v for k, v in r.items() if k not in ("tokens", "logprob")}})
    print(table(results, ["rows", "strategy", "lexicon", "steps", "ms_per_step", "ms_per_step_min",
                          "host_reads_per_step", "cpu_calls_per_step"]))
    payload = {"machine": info, "results": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
