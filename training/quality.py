"""Reply quality as a user meets it: the replies the service gives (model.generate runs the service's pipeline,
model.pipeline: lexicon-constrained decoding, over-generation and reranking), measured on a corpus split. A
context the service would refuse (a turn over its length limit) is skipped and counted (``skipped``), not rated.

Metrics, over the replies to each evaluated context (n per context):

- ``invented_reply_rate``: share of replies holding a word outside the *evaluation* lexicon, which is
  independent of the decoding lexicon (that one comes from the training corpora and travels in the bundle):
  English words of wordfreq's large list at a Zipf frequency of at least ``EVAL_MIN_ZIPF`` (2.0: about 10
  occurrences per billion words). How the cases count: a word holding a digit (a number, "5pm", "2nd") is real;
  an elongation ("hiii", "soooo") is real when squeezing its repeated letters to two, or one, gives a real
  word; "lol", "haha", "omg" and emoticon letters (":D") are real as far as wordfreq knows them (it does);
  names count as real only when wordfreq lists them at that frequency (common first names and places do, rare
  ones are counted as invented: strict by design). ``invented_word_rate`` is the same per word.
- ``generic_reply_rate``: share of replies whose words equal one of the ``GENERIC_TOP`` most frequent whole
  turns of the model's training corpora ("yeah", "ok", "thank you", "lol", ...): replies that could follow
  anything. Not computed when the training split cannot be read.
- ``cutoff_rate``: share of replies stopped by the length limit (no end token).
- ``distinct{1,2}_intra`` (within a context's replies, averaged), ``distinct{1,2}_inter`` (over all replies),
  ``mean_len`` in words, and ``bleu{1..4}_recall`` against the true next turn.
"""
from __future__ import annotations

import json
import logging
import random
import re
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from model import rerank as rr
from model.bundle import load_bundle
from model.generate import Generator
from model.pipeline import InputError, Limits, ReplySettings
from model.lexicon import words as lexicon_words
from model.text import normalize

from .evaluate import words as eval_words
from .metrics import bleu_precision_recall, distinct_inter, distinct_intra

log = logging.getLogger("training.quality")
EVAL_MIN_ZIPF = 2.0
GENERIC_TOP = 200


@lru_cache(maxsize=200_000)
def is_real_word(word: str) -> bool:
    """Is a (lower-cased) word real by the evaluation lexicon? See the module docstring."""
    from wordfreq import zipf_frequency

    if any(ch.isdigit() for ch in word):
        return True
    if zipf_frequency(word, "en", wordlist="large") >= EVAL_MIN_ZIPF:
        return True
    for squeezed in (re.sub(r"(.)\1{2,}", r"\1\1", word), re.sub(r"(.)\1+", r"\1", word)):
        if squeezed != word and zipf_frequency(squeezed, "en", wordlist="large") >= EVAL_MIN_ZIPF:
            return True
    return False


def invented_words(text: str) -> list[str]:
    return [w for w in lexicon_words(text) if not is_real_word(w)]


def generic_key(text: str) -> str:
    return " ".join(lexicon_words(text))


def generic_replies(turns: Sequence[str], top: int = GENERIC_TOP) -> set[str]:
    """The ``top`` most frequent whole turns (as word sequences) of a corpus."""
    counts = Counter(k for k in (generic_key(t) for t in turns) if k)
    return {k for k, _ in counts.most_common(top)}


def contexts_of(dialogs: Sequence[Any], limit: int, seed: int = 0) -> list[dict[str, Any]]:
    """Up to ``limit`` (context, true next turn) pairs of a split, a fixed-seed sample: every turn after the
    first of every dialog is a candidate (the context is the turns before it, at most 10)."""
    pairs = [(d, i) for d in dialogs for i in range(1, len(d.turns))]
    random.Random(seed).shuffle(pairs)
    out = []
    for d, i in pairs[:limit or None]:
        out.append({"id": f"{d.id}#{i}", "context": [t.text for t in d.turns[max(0, i - 10):i]],
                    "reference": d.turns[i].text})
    return out


def measure(items: Sequence[dict[str, Any]], generic: set[str] | None) -> dict[str, Any]:
    """The metrics of the module docstring over items {"replies", "reference", "finish"}."""
    replies = [r for it in items for r in it["replies"]]
    n_rep = max(len(replies), 1)
    inv = [invented_words(r) for r in replies]
    inv_counts = Counter(w for ws in inv for w in ws)
    n_words = sum(len(lexicon_words(r)) for r in replies)
    hyp_words = [[eval_words(r) for r in it["replies"]] for it in items]
    bleu: dict[str, float] = {}
    for hyps, it in zip(hyp_words, items):
        for k, v in bleu_precision_recall(hyps, [eval_words(it["reference"])]).items():
            if k.endswith("recall"):
                bleu[k] = bleu.get(k, 0.0) + v / max(len(items), 1)
    res: dict[str, Any] = {
        "contexts": len(items), "replies": len(replies),
        "invented_reply_rate": sum(bool(w) for w in inv) / n_rep,
        "invented_word_rate": sum(inv_counts.values()) / max(n_words, 1),
        "invented_words": dict(inv_counts.most_common(30)),
        "cutoff_rate": sum(f == "length" for it in items for f in it.get("finish", [])) / n_rep,
        "distinct1_intra": distinct_intra(hyp_words, 1), "distinct2_intra": distinct_intra(hyp_words, 2),
        "distinct1_inter": distinct_inter(hyp_words, 1), "distinct2_inter": distinct_inter(hyp_words, 2),
        "mean_len": sum(len(lexicon_words(r)) for r in replies) / n_rep,
        **bleu,
        "evaluation_lexicon": f"wordfreq 'large' English list, Zipf >= {EVAL_MIN_ZIPF} (see training/quality.py)",
    }
    if generic is not None:
        res["generic_reply_rate"] = sum(generic_key(r) in generic for r in replies) / n_rep
        res["generic_definition"] = f"the {GENERIC_TOP} most frequent whole turns of the training corpora"
    return res


def quality(bundle_dir: str | Path, corpus: str, data_dir: str, split: str = "test", n: int = 5,
            contexts: int = 200, seed: int = 1, rerank: bool = True, lexicon: bool = True,
            candidates_per_reply: int = rr.DEFAULT_CANDIDATES_PER_REPLY, mmi_weight: float = rr.DEFAULT_MMI_WEIGHT,
            diversity: float = rr.DEFAULT_DIVERSITY, latent_temperature: float = rr.DEFAULT_LATENT_TEMPERATURE,
            samples_out: str | Path | None = None, anti_lm: str = "probes", coherence_weight: float = 0.0,
            device: str = "cpu") -> dict[str, Any]:
    from .data import CorpusError, Source, TEXT_STYLE, read_sources

    bundle = load_bundle(bundle_dir, device=device)
    dialogs = read_sources([Source(corpus, data_dir)], split)
    items = contexts_of(dialogs, contexts, seed)
    if not items:
        raise CorpusError(f"the {split} split of {corpus} in {data_dir} has no dialog of two turns or more")
    gen = Generator(bundle, ReplySettings(lexicon=lexicon, rerank=rerank, candidates_per_reply=candidates_per_reply,
                                          mmi_weight=mmi_weight, diversity=diversity,
                                          latent_temperature=latent_temperature, anti_lm=anti_lm,
                                          coherence_weight=coherence_weight), Limits())
    seeds = [seed * 1_000_003 + i * 1009 for i in range(len(items))]  # a context's request seed
    log.info("quality of %s on %s/%s: %d contexts x %d replies (rerank %s, lexicon %s)", bundle.name, corpus,
             split, len(items), n, rerank, lexicon)
    from tqdm import tqdm
    rated, skipped = [], []
    outs = gen.respond_all([it["context"] for it in items], n, seeds)
    for it, s, out in tqdm(zip(items, seeds, outs), total=len(items), desc="replies", disable=None):
        it["request_seed"] = s
        if isinstance(out, InputError):
            skipped.append({"id": it["id"], "field": ".".join(map(str, out.loc)), "reason": out.msg})
            continue
        it["replies"] = [r.text for r in out.replies]
        it["seeds"] = [r.seed for r in out.replies]
        it["finish"] = [r.finish_reason for r in out.replies]
        it["ranking"] = [r.ranking["rank"] if r.ranking else None for r in out.replies]
        rated.append(it)
    if skipped:
        log.warning("%d of %d contexts skipped: the service would refuse them (%s)", len(skipped), len(items),
                    skipped[0]["reason"])
    items = rated
    generic = training_generic(bundle)
    res = measure(items, generic)
    res.update({"skipped": len(skipped), "skipped_contexts": skipped, "bundle": str(bundle_dir), "bundle_name": bundle.name, "bundle_sha256": bundle.sha256,
                "corpus": corpus, "split": split, "n": n, "seed": seed, "rerank": rerank, "lexicon": lexicon,
                "lexicon_words": len(bundle.lexicon) if bundle.lexicon else 0,
                "candidates_per_reply": candidates_per_reply if rerank else 1, "mmi_weight": mmi_weight,
                "diversity": diversity, "latent_temperature": latent_temperature,
                "anti_lm": gen.pipeline.anti_lm.kind if rerank else None, "coherence_weight": coherence_weight,
                "text_style": bundle.text_style, "corpus_style": TEXT_STYLE[corpus]})
    if samples_out:
        Path(samples_out).parent.mkdir(parents=True, exist_ok=True)
        with open(samples_out, "w") as f:
            for it in items:
                f.write(json.dumps(it) + "\n")
    return res


def training_generic(bundle: Any) -> set[str] | None:
    from .data import CorpusError, bundle_sources, read_sources

    try:
        dialogs = read_sources(bundle_sources(bundle.extra.get("data", {})), "train")
    except (CorpusError, KeyError, ValueError, OSError) as e:
        log.warning("generic-reply rate not computed: the training split cannot be read (%s)", e)
        return None
    return generic_replies([normalize(t.text, bundle.text_style) for d in dialogs for t in d.turns])

