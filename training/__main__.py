"""python -m training {train,evaluate,compare} ..."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import train

    cfg = load_config(args.config, args.set)
    bundle = train(cfg, args.out)
    logging.getLogger("training").info("done: %s", bundle)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    data: dict[str, str] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in ("data.corpus", "data.dir") or not value:
            raise SystemExit(f"evaluate: --set takes data.corpus=... or data.dir=..., got {item!r}")
        data[key.split(".")[1]] = value
    res = evaluate(args.bundle, split=args.split, corpus=data.get("corpus"), data_dir=data.get("dir"),
                   n_samples=args.n, batch_size=args.batch_size, seed=args.seed, device=args.device,
                   max_contexts=args.max_contexts, samples_out=args.samples, quantize=args.quantize)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    logging.getLogger("training").info("wrote %s", out)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report import compare

    notes = Path(args.notes_file).read_text() if args.notes_file else args.notes
    compare([Path(d) for d in args.runs], Path(args.out), title=args.title, notes=notes)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m training",
                                description="Train, evaluate and compare CVAE dialog models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (resumes when RUN_DIR holds a checkpoint)")
    t.add_argument("--config", required=True, help="TOML or YAML file (or a name in training/configs)")
    t.add_argument("--out", required=True, help="run folder: metrics.jsonl, checkpoint, bundle/")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field with a dotted key, e.g. train.steps=2000")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="evaluate a bundle on a corpus split")
    e.add_argument("--bundle", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--out", required=True, help="JSON file for the metrics")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data.corpus=... / data.dir=... (default: as recorded in the bundle)")
    e.add_argument("-n", type=int, default=5, help="prior samples per context")
    e.add_argument("--batch-size", type=int, default=64)
    e.add_argument("--seed", type=int, default=1)
    e.add_argument("--device", default="auto")
    e.add_argument("--max-contexts", type=int, default=0, help="evaluate only the first N (0 = all)")
    e.add_argument("--samples", help="also write the sampled replies as JSONL here")
    e.add_argument("--quantize", choices=["none", "int8"], default="none",
                   help="evaluate with the decoder quantized to int8, as served with DIALOG_QUANTIZE=int8 (CPU)")
    e.set_defaults(func=_evaluate)

    c = sub.add_parser("compare", help="report comparing runs: report.md, report.json, plots")
    c.add_argument("runs", nargs="+", help="run folders")
    c.add_argument("--out", required=True)
    c.add_argument("--title")
    c.add_argument("--notes")
    c.add_argument("--notes-file")
    c.set_defaults(func=_compare)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data import CorpusError
    from .loop import RunError
    from model.bundle import BundleError

    try:
        return args.func(args)
    except (ConfigError, CorpusError, CheckpointError, RunError, BundleError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
