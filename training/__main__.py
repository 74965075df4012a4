"""python -m training {train,evaluate,lexicon,quality,retrieval,humaneval,scaling,compare,synthetic} ...

Every value a user can get wrong is refused in one line (``error: ...`` or argparse's usage error) with exit
status 2 before any work: each numeric flag has a range, a flag that would change nothing is refused rather than
ignored, and the errors of the modules below that a user can cause are caught in :func:`main`."""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any

from model.quantize import MODES as QUANTIZE_MODES

from .cliargs import float_in, int_in, out_dir, out_file
from .cliargs import seed as seed_arg


class UsageError(Exception):
    """Values argparse cannot judge alone (flags that change nothing together, run folders that hold no run):
    one line, exit 2."""


def _train(args: argparse.Namespace) -> int:
    from .config import load_config
    from .loop import Stopped, train

    cfg = load_config(args.config, args.set)
    try:
        bundle = train(cfg, args.out)
    except Stopped as e:
        # Not finished: a non-zero status (128 + the signal, as the shell reports a death by it), so a
        # supervisor (a Job, a script under set -e) does not take the run for done.
        print(f"training: {e}; the checkpoint is written and the same command resumes the run", file=sys.stderr)
        return 128 + e.signum
    logging.getLogger("training").info("done: %s", bundle)
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from .data import CORPORA
    from .evaluate import evaluate

    data: dict[str, str] = {}
    for item in args.set:
        key, _, value = item.partition("=")
        if key not in ("data.corpus", "data.dir") or not value:
            raise UsageError(f"evaluate: --set takes data.corpus=... or data.dir=..., got {item!r}")
        if key == "data.corpus" and value not in CORPORA:
            raise UsageError(f"evaluate: --set data.corpus: unknown corpus {value!r}; one of {', '.join(CORPORA)}")
        data[key.split(".")[1]] = value
    res = evaluate(args.bundle, split=args.split, corpus=data.get("corpus"), data_dir=data.get("dir"),
                   n_samples=args.n, batch_size=args.batch_size, seed=args.seed, device=args.device,
                   max_contexts=args.max_contexts, samples_out=args.samples, quantize=args.quantize)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    logging.getLogger("training").info("wrote %s", out)
    return 0


def _lexicon(args: argparse.Namespace) -> int:
    from model.bundle import add_lexicon, load_bundle

    from .data import bundle_sources, read_sources
    from .loop import build_lexicon, build_reply_lm

    bundle = load_bundle(args.bundle)
    sources = bundle_sources(bundle.extra.get("data", {}))
    dialogs = read_sources(sources, "train")
    lexicon = build_lexicon(dialogs, bundle.text_style, args.min_count)
    assert lexicon is not None, "--min-count is at least 1"
    reply_lm = build_reply_lm(dialogs, bundle.text_style, bundle.tokenizer)
    sha = add_lexicon(args.bundle, lexicon, reply_lm)
    logging.getLogger("training").info("%s: lexicon of %d words (seen >= %d times), reply bigram model of %d "
                                       "bigrams; bundle sha256 %s", args.bundle, len(lexicon), args.min_count,
                                       len(reply_lm), sha)
    return 0


# quality's flags that only the reranker reads, with their defaults: given with --no-rerank they would change nothing
def _rerank_only() -> dict[str, Any]:
    from model import rerank as rr

    return {"candidates_per_reply": rr.DEFAULT_CANDIDATES_PER_REPLY, "mmi_weight": rr.DEFAULT_MMI_WEIGHT,
            "diversity": rr.DEFAULT_DIVERSITY, "coherence_weight": 0.0, "anti_lm": "probes"}


def _quality(args: argparse.Namespace) -> int:
    from .quality import quality

    given = [k for k in _rerank_only() if getattr(args, k) is not None]
    if not args.rerank and given:
        raise UsageError(f"quality: {', '.join('--' + k.replace('_', '-') for k in given)} would change nothing "
                         "with --no-rerank (only the reranker reads them)")
    for k, default in _rerank_only().items():
        if getattr(args, k) is None:
            setattr(args, k, default)
    res = quality(args.bundle, args.corpus, args.data_dir or f"../shared/data/{args.corpus}", split=args.split,
                  n=args.n, contexts=args.contexts, seed=args.seed, rerank=args.rerank, lexicon=args.lexicon,
                  candidates_per_reply=args.candidates_per_reply, mmi_weight=args.mmi_weight,
                  diversity=args.diversity, latent_temperature=args.latent_temperature, samples_out=args.samples,
                  anti_lm=args.anti_lm, coherence_weight=args.coherence_weight)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    logging.getLogger("training").info("invented %.4f, generic %s, distinct-2 within %.3f; wrote %s",
                                       res["invented_reply_rate"], res.get("generic_reply_rate"),
                                       res["distinct2_intra"], out)
    return 0


def _retrieval(args: argparse.Namespace) -> int:
    from .retrieval import retrieval

    res = retrieval(args.bundle, args.corpus, args.data_dir or f"../shared/data/{args.corpus}", split=args.split,
                    n=args.n, contexts=args.contexts, seed=args.seed, samples_out=args.samples)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")
    logging.getLogger("training").info("retrieval: %d contexts, %d with fewer than n replies; wrote %s",
                                       res["contexts"], res["short_lists"], out)
    return 0


def _humaneval(args: argparse.Namespace) -> int:
    from . import humaneval

    if args.action == "export":
        humaneval.export(args.systems, Path(args.out), Path(args.key), contexts=args.contexts,
                         replies=args.replies, seed=args.seed)
    else:
        res = humaneval.score(Path(args.sheet), Path(args.key), [Path(r) for r in args.ratings])
        text = humaneval.report(res)
        if args.out:
            Path(args.out).write_text(json.dumps(res, indent=2) + "\n")
            Path(args.out).with_suffix(".md").write_text(text)
        print(text)
    return 0


def _compare(args: argparse.Namespace) -> int:
    from .report import compare, read_metrics

    missing = [d for d in args.runs if not Path(d).is_dir()]
    if missing:
        raise FileNotFoundError(f"compare: not a run folder: {', '.join(missing)}")
    empty = [d for d in args.runs if not any(read_metrics(Path(d) / "metrics.jsonl"))]
    if empty:
        raise UsageError(f"compare: no metrics in {', '.join(empty)} (metrics.jsonl missing or without a row): "
                         "not a run, or one that has not logged yet")
    notes = Path(args.notes_file).read_text() if args.notes_file else args.notes
    compare([Path(d) for d in args.runs], Path(args.out), title=args.title, notes=notes, against=args.against)
    return 0


def _export(args: argparse.Namespace) -> int:
    """A bundle from a run's checkpoint (its last or best weights), while the run may still be training: the
    run's files are copied aside first, so its folder is only read."""
    import shutil
    import tempfile

    from .config import from_dict
    from .loop import RunError, Trainer

    run = Path(args.run)
    if not (run / "config.json").is_file() or not (run / "tokenizer.model").is_file():
        raise RunError(f"{run}: not a run folder (no config.json and tokenizer.model)")
    if not (run / "checkpoint.safetensors").is_file():
        raise RunError(f"{run}: no checkpoint to export yet")
    if args.which == "best" and not (run / "best.safetensors").is_file():
        raise RunError(f"{run}: no best.safetensors yet (no validation has run)")
    cfg = from_dict(json.loads((run / "config.json").read_text()))
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        for name in ("config.json", "tokenizer.model", "checkpoint.safetensors", "best.safetensors"):
            if (run / name).is_file():
                shutil.copy2(run / name, Path(tmp) / name)
        trainer = Trainer(cfg, tmp)
        trainer.prepare()  # the data (lexicon, reply model, label vocabularies) and the checkpoint's weights
        trainer.export(Path(args.out), which=args.which)
    logging.getLogger("training").info("exported %s weights of %s at step %d to %s", args.which, run,
                                       trainer.step, args.out)
    return 0


def _scaling(args: argparse.Namespace) -> int:
    from .report import ReportError
    from .report.scaling import scaling

    sps: dict[str, float] = {}
    for item in args.seconds_per_step:
        name, _, value = item.partition("=")
        try:
            sps[name] = float_in(0, sys.float_info.max, above=True)(value)  # finite and above 0
        except argparse.ArgumentTypeError:
            raise ReportError(f"--seconds-per-step takes RUN=SECONDS with SECONDS above 0, got {item!r}") from None
        if not name:
            raise ReportError(f"--seconds-per-step takes RUN=SECONDS, got {item!r}")
    scaling([Path(d) for d in args.runs], Path(args.out), args.budget_cpu_hours, sps or None)
    return 0


def _synthetic(args: argparse.Namespace) -> int:
    from .synthetic import main_args

    return main_args(args)


def build_parser() -> argparse.ArgumentParser:
    from model import rerank as rr

    from .schedules import ScheduleConfig

    schedule_settings = [f.name for f in dataclasses.fields(ScheduleConfig) if f.name != "kind"]

    p = argparse.ArgumentParser(prog=_program(),
                                description="Train, evaluate and compare CVAE dialog models.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model (resumes when RUN_DIR holds a checkpoint)")
    t.add_argument("--config", required=True, help="TOML or YAML file (or a name in training/configs)")
    t.add_argument("--out", required=True, type=out_dir, help="run folder: metrics.jsonl, checkpoint, bundle/")
    t.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field with a dotted key, e.g. train.steps=2000")
    t.set_defaults(func=_train)

    e = sub.add_parser("evaluate", help="evaluate a bundle on a corpus split")
    e.add_argument("--bundle", required=True)
    e.add_argument("--split", default="test", choices=["train", "valid", "test"])
    e.add_argument("--out", required=True, type=out_file, help="JSON file for the metrics")
    e.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="data.corpus=... / data.dir=... (default: as recorded in the bundle)")
    e.add_argument("-n", type=int_in(1, 100), default=5, help="prior samples per context (default 5, at most 100)")
    e.add_argument("--batch-size", type=int_in(1, 4096), default=64, help="contexts per batch (default 64)")
    e.add_argument("--seed", type=seed_arg, default=1)
    e.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    e.add_argument("--max-contexts", type=int_in(0, None), default=0,
                   help="sample replies for only the first N contexts (0 = all)")
    e.add_argument("--samples", type=out_file, help="also write the sampled replies as JSONL here")
    e.add_argument("--quantize", choices=list(QUANTIZE_MODES), default="none",
                   help="evaluate with the decoder at lower precision, as served with DIALOG_QUANTIZE (int8: CPU; bf16: "
                        "a bf16 CPU or a GPU)")
    e.set_defaults(func=_evaluate)

    lx = sub.add_parser("lexicon", help="build a bundle's decoding lexicon and reply bigram model (the reranker's "
                                         "anti-LM) from its training data (in place)")
    lx.add_argument("--bundle", required=True)
    lx.add_argument("--min-count", type=int_in(1, None), default=20,
                    help="keep words seen at least this often (default 20)")
    lx.set_defaults(func=_lexicon)

    q = sub.add_parser("quality", help="replies as the service makes them, measured: invented words, generic "
                                         "replies, distinct-n, length, BLEU recall")
    q.add_argument("--bundle", required=True)
    q.add_argument("--corpus", required=True, choices=["swda", "dailydialog", "chitchat", "jsonl"])
    q.add_argument("--data-dir", help="corpus folder (default ../shared/data/CORPUS)")
    q.add_argument("--split", default="test", choices=["train", "valid", "test"])
    q.add_argument("--out", required=True, type=out_file, help="JSON file for the metrics")
    q.add_argument("--samples", type=out_file, help="also write contexts, replies and true next turns as JSONL here")
    q.add_argument("-n", type=int_in(1, 16), default=5, help="replies per context (default 5; at most 16, as the "
                                                                "service)")
    q.add_argument("--contexts", type=int_in(0, None), default=200, help="contexts, a fixed-seed sample (0 = all)")
    q.add_argument("--seed", type=int_in(0, None), default=1)
    q.add_argument("--no-rerank", dest="rerank", action="store_false", help="n samples, no reranking")
    q.add_argument("--no-lexicon", dest="lexicon", action="store_false", help="unconstrained decoding")
    # The reranker's flags default to None, so that one given with --no-rerank can be told from its default
    # (_rerank_only) and refused.
    q.add_argument("--candidates-per-reply", type=int_in(1, 16),
                   help=f"candidates decoded per reply (reranking only; default {rr.DEFAULT_CANDIDATES_PER_REPLY})")
    q.add_argument("--mmi-weight", type=float_in(0, 2),
                   help=f"weight of the anti-LM's log p(reply) in the rank (reranking only; default "
                        f"{rr.DEFAULT_MMI_WEIGHT:g})")
    q.add_argument("--diversity", type=float_in(0, 10),
                   help=f"MMR's weight on the likeness to replies chosen before (reranking only; default "
                        f"{rr.DEFAULT_DIVERSITY:g})")
    q.add_argument("--latent-temperature", type=float_in(0, 10), default=rr.DEFAULT_LATENT_TEMPERATURE,
                   help="default: the service's")
    q.add_argument("--coherence-weight", type=float_in(0, 10),
                   help="weight of the response-selection head's coherence term (bundles with the head; reranking "
                        "only; default 0)")
    q.add_argument("--anti-lm", choices=["probes", "reply_lm"],
                   help="log p(reply) of the reranker: the decoder over probe contexts (default, the service's) or "
                        "the bundle's reply bigram model")
    q.set_defaults(func=_quality)

    rt = sub.add_parser("retrieval", help="the retrieval baseline: the replies that followed the training turns "
                                          "most like each context's last turn (BM25), on quality's contexts")
    rt.add_argument("--bundle", required=True, help="the bundle whose recorded training split is the index")
    rt.add_argument("--corpus", required=True, choices=["swda", "dailydialog", "chitchat", "jsonl"])
    rt.add_argument("--data-dir", help="corpus folder (default ../shared/data/CORPUS)")
    rt.add_argument("--split", default="test", choices=["train", "valid", "test"])
    rt.add_argument("--out", required=True, type=out_file, help="JSON file for the metrics")
    rt.add_argument("--samples", type=out_file, help="also write contexts, replies and true next turns as JSONL here")
    rt.add_argument("-n", type=int_in(1, 16), default=5, help="replies per context (default 5)")
    rt.add_argument("--contexts", type=int_in(0, None), default=200, help="as quality's (0 = all)")
    rt.add_argument("--seed", type=int_in(0, None), default=1, help="as quality's: the same seed, the same contexts")
    rt.set_defaults(func=_retrieval)

    h = sub.add_parser("humaneval", help="blind human evaluation: export a judging sheet, score the ratings")
    hs = h.add_subparsers(dest="action", required=True)
    hx = hs.add_parser("export", help="a shuffled sheet of contexts and candidates (systems + the true turn)")
    hx.add_argument("systems", nargs="+", metavar="NAME=SAMPLES.jsonl", help="samples written by 'quality --samples'")
    hx.add_argument("--out", required=True, type=out_file, help="the sheet (JSON) to hand to raters")
    hx.add_argument("--key", required=True, type=out_file,
                    help="where each candidate came from (keep it away from raters)")
    hx.add_argument("--contexts", type=int_in(1, None), default=100, help="contexts on the sheet (default 100)")
    hx.add_argument("--replies", type=int_in(1, 16), default=5,
                    help="replies per system and context (default 5; at most 16, as quality's -n)")
    hx.add_argument("--seed", type=int_in(0, None), default=1)
    hc = hs.add_parser("score", help="sensible, specific, SSA per system with intervals; agreement; preference")
    hc.add_argument("--sheet", required=True)
    hc.add_argument("--key", required=True)
    hc.add_argument("ratings", nargs="+", help="one ratings JSON file per rater")
    hc.add_argument("--out", type=out_file, help="write the scores as JSON here (and a .md table beside it)")
    h.set_defaults(func=_humaneval)

    ex = sub.add_parser("export", help="a bundle from a run's checkpoint, last or best weights (the run may be "
                                       "training: its folder is only read)")
    ex.add_argument("--run", required=True, help="the run folder")
    ex.add_argument("--which", choices=["last", "best"], default="best",
                    help="the checkpoint's weights (last) or the lowest validation ELBO's (best, the default)")
    ex.add_argument("--out", required=True, type=out_dir, help="the bundle folder to write")
    ex.set_defaults(func=_export)

    sc = sub.add_parser("scaling", help="the scaling probe's report: validation ELBO against training CPU time, "
                                        "fitted and extrapolated to a budget")
    sc.add_argument("runs", nargs="+", metavar="RUN_DIR")
    sc.add_argument("--out", required=True, type=out_dir, help="folder for report.md, report.json, elbo-vs-cpu.png")
    sc.add_argument("--budget-cpu-hours", type=float_in(0, 1e6, above=True), default=24.0,
                    help="the budget to extrapolate to, in CPU hours (default 24: 12 hours of two cores; at most 1e6)")
    sc.add_argument("--seconds-per-step", action="append", default=[], metavar="RUN=SECONDS",
                    help="count this run's time as its steps x SECONDS (one step's CPU time measured alone, e.g. by "
                         "benchmarks/train_throughput.py) instead of the CPU time charged while sharing the cores")
    sc.set_defaults(func=_scaling)

    c = sub.add_parser("compare", help="report comparing runs: report.md, report.json, plots")
    c.add_argument("runs", nargs="+", help="run folders (metrics.jsonl, config.json, eval/test.json when evaluated)")
    c.add_argument("--out", required=True, type=out_dir, help="folder for report.md, report.json and the plots")
    c.add_argument("--title")
    notes = c.add_mutually_exclusive_group()
    notes.add_argument("--notes", help="text put verbatim under Notes")
    notes.add_argument("--notes-file", help="file whose text is put verbatim under Notes")
    c.add_argument("--against", action="append", default=[], metavar="KEY", choices=schedule_settings,
                   help="also plot the test metrics against this schedule setting (cycles, ratio, shape, ...; "
                        "repeatable): against-KEY.png, with the runs of other schedule kinds as flat lines")
    c.set_defaults(func=_compare)

    from .synthetic import build_parser as synthetic_parser

    sy = sub.add_parser("synthetic", help="Fu et al.'s synthetic experiment: a sequence VAE with a 2-D latent on ten "
                                          "sequences, monotonic vs cyclical; figures of the latent space")
    synthetic_parser(sy).set_defaults(func=_synthetic)
    return p


def _program() -> str:
    """The name this command was run by: ``python -m training``, or the installed ``cvae-dialog-train``."""
    name = Path(sys.argv[0]).name if sys.argv and sys.argv[0] else ""
    return name if name.startswith("cvae-dialog-train") else "python -m training"


def _missing_extra(e: ModuleNotFoundError) -> int:
    if _program() == "python -m training":
        how = ("`.venv/bin/pip install -c constraints.txt -c requirements/dev.txt -e '.[train]'` "
               "(or `make install-dev`)")
    else:
        how = "`pip install 'cvae-dialog[train]'`"
    print(f"error: {e}: training needs its extra packages; install them with {how}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:  # these modules import the train extra's packages (PyYAML, tqdm, NLTK, ...), absent after `make serve`
        from .checkpoint import CheckpointError
        from .config import ConfigError
        from .data import CorpusError
        from .evaluate import EvaluateError
        from .humaneval import HumanEvalError
        from .loop import RunError
        from .report import ReportError
        from .synthetic import SyntheticError
        from model.bundle import BundleError
        from model.files import DeviceError, WriteError
        from model.rerank import RerankError
    except ModuleNotFoundError as e:
        return _missing_extra(e)
    try:
        return args.func(args)
    except ModuleNotFoundError as e:
        return _missing_extra(e)
    # OSError: a file or folder named on the command line that is missing or cannot be written (its message names it)
    except (UsageError, ConfigError, CorpusError, CheckpointError, RunError, BundleError, RerankError, DeviceError,
            EvaluateError, HumanEvalError, ReportError, SyntheticError, WriteError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
