"""GPU figures: training throughput of the real training loop and engine serving throughput.

    python -m benchmarks.gpu --out gpu.json            # on a machine with a CUDA device

Training: ``Trainer.run`` for ``--steps`` steps per (config, amp) pair, throughput read from the
run's own ``metrics.jsonl`` (the first logging window, which holds start-up, is dropped). Serving: the
engine alone (no HTTP) on the default model, one request at a time and 16 in flight, n=5 replies each.
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from training.config import load_config
from training.loop import Trainer

CONTEXTS = [["Hi, how are you today?", "Fine, thanks. Where are you going?"],
            ["Would you like some coffee?"],
            ["Excuse me, is this the way to the station?", "Yes, go straight and turn left.", "Thanks a lot!"]]


def train_throughput(config: str, amp: str, steps: int, work: Path, data_root: str) -> dict:
    corpus = config.split("-")[0]
    out = work / f"{config}-{amp}"
    tok = work / f"{config}.tokenizer.model"
    out.mkdir(parents=True, exist_ok=True)
    if tok.exists():
        shutil.copy(tok, out / "tokenizer.model")
    cfg = load_config(config + ".toml", [f"train.steps={steps}", "train.log_every=50", f"train.eval_every={10**9}",
                                         f"train.ckpt_every={10**9}", f"train.amp={amp}", "train.device=cuda",
                                         "train.num_threads=2", f"data.dir={data_root}/{corpus}"])
    Trainer(cfg, out).run()
    if not tok.exists():
        shutil.copy(out / "tokenizer.model", tok)
    rows = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if r.get("split") != "valid"][1:]
    return {"config": config, "amp": amp, "batch_size": cfg.train.batch_size,
            "batches_per_s": statistics.mean(r["batches_per_s"] for r in rows),
            "tokens_per_s": statistics.mean(r["tokens_per_s"] for r in rows)}


def serve_throughput(requests: int) -> list[dict]:
    from app.engine import Engine, GenerationRequest

    engine = Engine.from_bundle(None, device="cuda", torch_threads=2)
    engine.start()
    out = []
    try:
        for conc in (1, 16):
            for _ in range(5):
                engine.submit(GenerationRequest(context=CONTEXTS[0], n=5, seed=0)).result()
            lat: list[float] = []

            def one(i: int) -> None:
                t = time.perf_counter()
                engine.submit(GenerationRequest(context=CONTEXTS[i % 3], n=5, seed=i)).result()
                lat.append(time.perf_counter() - t)

            t0 = time.perf_counter()
            with ThreadPoolExecutor(conc) as pool:
                list(pool.map(one, range(requests)))
            wall = time.perf_counter() - t0
            lat.sort()
            out.append({"concurrency": conc, "requests": requests, "p50_ms": 1000 * lat[len(lat) // 2],
                        "p99_ms": 1000 * lat[int(0.99 * (len(lat) - 1))], "replies_per_s": 5 * requests / wall})
    finally:
        engine.close(10)
    return out


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--data", default="../shared/data")
    p.add_argument("--configs", default="swda-cyclical,dailydialog-cyclical")
    p.add_argument("--amps", default="none,bf16")
    p.add_argument("--out", default="gpu.json")
    args = p.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("no CUDA device")
    res = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "python": platform.python_version(),
           "train": [], "serve": []}
    work = Path(tempfile.mkdtemp(prefix="gpu-bench-"))
    for config in args.configs.split(","):
        for amp in args.amps.split(","):
            res["train"].append(train_throughput(config, amp, args.steps, work, args.data))
            print(json.dumps(res["train"][-1]), flush=True)
    res["serve"] = serve_throughput(args.requests)
    print(json.dumps(res["serve"]), flush=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
