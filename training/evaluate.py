"""Evaluation as in the papers: posterior-z losses, latent use, and prior-sampled replies.

With the posterior z: reconstruction NLL per token and perplexity, KL(q || p), ELBO, bag-of-words
loss, active units and mutual information I(x; z). With N prior samples per context decoded
greedily (as Zhao et al.'s evaluation does): BLEU-1..4 precision and recall, distinct-1/2 within a
context's replies and over the split, mean reply length. Words for BLEU and distinct-n are the
lower-cased normalised text split into words and punctuation marks.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from model.bundle import load_bundle
from model.cvae import CVAE
from model.decoding import decode
from model.config import BOS_ID, PAD_ID, UNK_ID
from model.files import pick_device
from model.text import detokenize

from .metrics import (MetricAccumulator, active_units, bleu_precision_recall, distinct_inter,
                      distinct_intra, mi_ceiling, mutual_information)

log = logging.getLogger("training.evaluate")
_WORD = re.compile(r"\w+(?:'\w+)*|[^\w\s]")



class EvaluateError(ValueError):
    """An evaluation that cannot run as asked (no corpus to read, a split without contexts): one line."""


SINGLE_REFERENCE_NOTE = ("one reference per context: BLEU recall here is against the single "
                         "observed reply, not the multi-reference SwDA test set of Zhao et al.")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


@torch.no_grad()
def posterior_metrics(model: CVAE, examples: Any, batch_size: int, device: torch.device,
                      max_batches: int = 0, amp: bool = False, latent: bool = True,
                      progress: bool = False) -> dict[str, float]:
    """Losses with z ~ q(z | c, x) over a split (model in eval mode)."""
    model.eval()
    acc = MetricAccumulator()
    mus, logvars, zs = [], [], []
    batches = examples.sequential(batch_size)
    if max_batches:
        batches = batches[:max_batches]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)
    for idx in tqdm(batches, desc="posterior", disable=not progress or None, leave=False):
        batch = examples.batch(idx).to(device)
        with autocast:
            out = model(batch)
        B = batch.size
        acc.add_batch(rc_nll_sum=out["rc_nll_sum"], n_tokens=int(out["n_tokens"]),
                      kl_sum=out["kl"] * B, n_responses=B, bow_loss_sum=out["bow_loss"] * B)
        if model.cfg.kgcvae:
            acc.add("act_loss", out["act_loss"] * B, B)
        if model.cfg.rs_dim:  # response selection among the batch's responses and the distractors
            acc.add("rs_loss", out["rs_loss"] * B, B)
            acc.add("rs_acc", out["rs_acc"] * B, B)
        if latent:
            mus.append(out["mu_q"].float().cpu())
            logvars.append(out["logvar_q"].float().cpu())
            zs.append(out["z"].float().cpu())
    res: dict[str, Any] = acc.summary()
    if latent and mus:
        mu = torch.cat(mus)
        res["active_units"] = active_units(mu.numpy())
        res["latent_dim"] = int(mu.shape[1])
        # over the whole split's aggregate posterior: a batch's estimate cannot exceed log(batch size)
        res["mi"] = mutual_information(mu, torch.cat(logvars), torch.cat(zs))
        res["mi_ceiling"] = mi_ceiling(len(mu))
        res["mi_saturated"] = res["mi"] > 0.9 * res["mi_ceiling"]
    return res


@torch.no_grad()
def sample_replies(bundle: Any, examples: Any, n_samples: int, batch_size: int, seed: int,
                   max_contexts: int = 0, progress: bool = True,
                   contexts: list[list[str]] | None = None) -> tuple[list[list[str]], list[str]]:
    """For each example's context: n_samples prior z's, each decoded greedily. Returns the replies
    (detokenised text) grouped per context and the reference reply texts; appends each context's
    turns (as the model sees them, the start marker as "") to ``contexts`` when given."""
    model, tok, style = bundle.model, bundle.tokenizer, bundle.text_style
    device = bundle.device
    gen = torch.Generator(device="cpu").manual_seed(seed)
    banned = (PAD_ID, UNK_ID, BOS_ID, tok.dialog_start_id)
    idx_all = np.arange(len(examples))[:max_contexts or None]
    groups, refs = [], []
    for start in tqdm(range(0, len(idx_all), batch_size), desc="sampling", disable=not progress or None):
        idx = idx_all[start:start + batch_size]
        batch = examples.batch(idx).to(device)
        cond = model.encode(batch)
        mu, logvar = model.prior(cond)
        eps = torch.randn((len(idx) * n_samples, mu.shape[1]), generator=gen).to(device)
        mu, logvar, cond = (t.repeat_interleave(n_samples, 0) for t in (mu, logvar, cond))
        z = mu + eps * (0.5 * logvar).exp()
        out = decode(model, cond, z, model.cfg.max_decode_len, "greedy", banned=banned)
        texts = [detokenize(tok.decode(t), style) for t in out.tokens]
        for j, ix in enumerate(idx):
            groups.append(texts[j * n_samples:(j + 1) * n_samples])
            di, ti = examples.examples[int(ix)]
            refs.append(detokenize(tok.decode(examples.dialogs[di].turns[ti]), style))
            if contexts is not None:
                start = max(0, ti - examples.max_context_turns)
                contexts.append([detokenize(tok.decode(u), style) for u in examples.dialogs[di].turns[start:ti]])
    return groups, refs


def reply_metrics(groups: list[list[str]], refs: list[str]) -> dict[str, float]:
    """Metrics of sampled replies (text), grouped per context, against one reference reply per context, over
    :func:`words`: BLEU-1..4 precision and recall (training.metrics.bleu_precision_recall, mean over contexts),
    distinct-1/2 within each context's replies (mean over contexts) and over all replies, and the mean reply
    length in words."""
    hyp_words = [[words(t) for t in g] for g in groups]
    sums: dict[str, float] = {}
    for hyps, ref in zip(hyp_words, refs):
        for k, v in bleu_precision_recall(hyps, [words(ref)]).items():
            sums[k] = sums.get(k, 0.0) + v
    out = {k: v / max(len(groups), 1) for k, v in sums.items()}
    out.update({
        "distinct1_intra": distinct_intra(hyp_words, 1), "distinct2_intra": distinct_intra(hyp_words, 2),
        "distinct1_inter": distinct_inter(hyp_words, 1), "distinct2_inter": distinct_inter(hyp_words, 2),
        "mean_len": float(np.mean([len(h) for g in hyp_words for h in g])) if groups else 0.0,
    })
    return out


def evaluate(bundle_dir: str | Path, split: str = "test", corpus: str | None = None,
             data_dir: str | None = None, n_samples: int = 5, batch_size: int = 64, seed: int = 1,
             device: str = "auto", max_contexts: int = 0, samples_out: str | Path | None = None,
             quantize: str = "none") -> dict[str, Any]:
    from .batching import ExampleSet, Vocabs
    from .data import Source, read_sources

    if n_samples < 1 or batch_size < 1 or max_contexts < 0:
        raise EvaluateError(f"n_samples ({n_samples}) and batch_size ({batch_size}) must be at least 1 and "
                            f"max_contexts ({max_contexts}) at least 0")
    dev = pick_device(device)  # DeviceError: a device that is not there
    bundle = load_bundle(bundle_dir, device=dev, quantize=quantize)  # int8: decoder quantized (CPU)
    data = bundle.extra.get("data", {})
    if corpus is None and data_dir is None and data.get("corpus") == "mix":
        sources = [Source.parse(raw, f"data.mix[{i}]") for i, raw in enumerate(data.get("mix") or [])]
        corpus, data_dir = "mix", ",".join(s.dir for s in sources)
    else:
        corpus = corpus or data.get("corpus")
        data_dir = data_dir or data.get("dir")
        if not corpus or not data_dir or corpus == "mix":
            trained_on = "was trained on a mix of corpora" if data.get("corpus") == "mix" else "records no corpus"
            raise EvaluateError(f"{bundle_dir} {trained_on}: to evaluate on one corpus, pass both "
                                "--set data.corpus=... and --set data.dir=...")
        sources = [Source(corpus, data_dir)]
    vocabs = Vocabs.from_dict(bundle.extra["vocabs"]) if "vocabs" in bundle.extra else Vocabs()
    dialogs = read_sources(sources, split)
    cfg = bundle.config
    examples = ExampleSet(dialogs, bundle.tokenizer, bundle.text_style, vocabs, cfg.max_context_turns,
                          cfg.max_utt_len)
    if not len(examples):
        raise EvaluateError(f"the {split} split of {corpus} in {data_dir} has no context with a reply to evaluate")
    log.info("evaluating %s on %s/%s: %d contexts", bundle.name, corpus, split, len(examples))
    torch.manual_seed(seed)
    res: dict[str, Any] = posterior_metrics(bundle.model, examples, batch_size, dev, progress=True)
    contexts: list[list[str]] = []
    groups, refs = sample_replies(bundle, examples, n_samples, batch_size, seed, max_contexts,
                                  contexts=contexts)
    res.update(reply_metrics(groups, refs))
    res.update({
        "n_contexts": len(groups), "n_samples": n_samples, "decoding": "greedy per prior sample",
        "bundle": str(bundle_dir), "bundle_name": bundle.name, "bundle_sha256": bundle.sha256,
        "corpus": corpus, "data_dir": str(data_dir), "split": split, "seed": seed, "quantize": quantize,
        "references": SINGLE_REFERENCE_NOTE,
    })
    if samples_out:
        Path(samples_out).parent.mkdir(parents=True, exist_ok=True)
        with open(samples_out, "w") as f:
            for c, g, r in zip(contexts, groups, refs):
                f.write(json.dumps({"context": c, "reference": r, "replies": g}) + "\n")
    return res
