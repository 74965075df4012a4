"""Evaluation metrics for the dialog CVAE: pure functions over token lists, arrays and tensors.

- BLEU precision / recall over N sampled replies against the references of one context (Zhao et al. 2017).
- distinct-n within a context's replies (intra) and over a whole split (inter).
- Active units of the latent code (Burda et al. 2016) and the mutual information I(x; z) under q
  (the estimator of He et al. 2019, used by Fu et al. 2019 to compare annealing schedules).
- `MetricAccumulator`: token- and response-weighted means of loss terms over batches.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

BLEU_ORDERS = (1, 2, 3, 4)
_SMOOTHING = SmoothingFunction().method7


# --------------------------------------------------------------------------------------------- BLEU


def sentence_bleu_n(ref: Sequence[str], hyp: Sequence[str], n: int, clip: bool = True) -> float:
    """Sentence BLEU-n of `hyp` against one reference, uniform weights 1/n on orders 1..n, smoothing method 7.

    NLTK's method 7 (method 4, then method 5, which averages neighbouring orders with m[-1] = p_1 + 1)
    can push a smoothed precision above 1, so a hypothesis equal to its reference scores e.g. 4/3 on
    BLEU-1. With `clip` the score is capped at 1.0, which changes only such scores; `clip=False` gives
    NLTK's raw value, as the published evaluation computed it. Empty inputs score 0.0.
    """
    if n < 1:
        raise ValueError(f"BLEU order must be >= 1, got {n}")
    if len(hyp) == 0 or len(ref) == 0:
        return 0.0
    with warnings.catch_warnings():
        # NLTK warns on zero n-gram overlaps; for short dialog replies that is the common case.
        warnings.simplefilter("ignore")
        score = float(
            sentence_bleu([list(ref)], list(hyp), weights=(1.0 / n,) * n, smoothing_function=_SMOOTHING)
        )
    return min(score, 1.0) if clip else score


def bleu_precision_recall(
    hyps: Sequence[Sequence[str]], refs: Sequence[Sequence[str]], clip: bool = True
) -> dict[str, float]:
    """BLEU precision and recall of N sampled replies against the references of ONE context.

    With B_n(r, h) the sentence BLEU-n of hypothesis h against reference r:
        bleu{n}_precision = mean_h max_r B_n(r, h)   (are the samples good replies?)
        bleu{n}_recall    = mean_r max_h B_n(r, h)   (is every reference covered by some sample?)
    for n = 1..4. With no hypotheses or no references every score is 0.0.
    """
    out: dict[str, float] = {}
    if len(hyps) == 0 or len(refs) == 0:
        for n in BLEU_ORDERS:
            out[f"bleu{n}_precision"] = 0.0
            out[f"bleu{n}_recall"] = 0.0
        return out
    for n in BLEU_ORDERS:
        scores = np.array([[sentence_bleu_n(r, h, n, clip) for h in hyps] for r in refs])  # (R, H)
        out[f"bleu{n}_precision"] = float(scores.max(axis=0).mean())
        out[f"bleu{n}_recall"] = float(scores.max(axis=1).mean())
    return out


# ----------------------------------------------------------------------------------------- distinct


def _ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(replies: Sequence[Sequence[str]], n: int) -> float:
    """Number of distinct n-grams over the total number of n-grams in `replies` (0.0 when there are none)."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    grams = [g for reply in replies for g in _ngrams(reply, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def distinct_intra(groups: Sequence[Sequence[Sequence[str]]], n: int) -> float:
    """Mean over contexts of distinct-n within each context's replies (a context without n-grams counts 0.0)."""
    if len(groups) == 0:
        return 0.0
    return float(np.mean([distinct_n(g, n) for g in groups]))


def distinct_inter(groups: Sequence[Sequence[Sequence[str]]], n: int) -> float:
    """distinct-n over all replies of all contexts of a split."""
    return distinct_n([reply for g in groups for reply in g], n)


# ---------------------------------------------------------------------------------------- latent code


def active_units(
    mu: np.ndarray, threshold: float = 0.01, return_variances: bool = False
) -> int | tuple[int, np.ndarray]:
    """Number of latent dimensions u with Var_x(E_{q(z|x)}[z_u]) > threshold (Burda et al. 2016).

    `mu` holds the posterior means over the data, shape (num_examples, latent_dim); the variance is the
    population variance over examples. With `return_variances` also returns the per-dimension variances.
    """
    mu = np.asarray(mu, dtype=np.float64)
    if mu.ndim != 2:
        raise ValueError(f"mu must be (num_examples, latent_dim), got shape {mu.shape}")
    variances = mu.var(axis=0) if mu.shape[0] > 0 else np.zeros(mu.shape[1])  # (D,)
    count = int((variances > threshold).sum())
    return (count, variances) if return_variances else count


def mutual_information(mu: torch.Tensor, logvar: torch.Tensor, z: torch.Tensor, chunk: int = 2048) -> float:
    """Estimate of I(x; z) under q over N examples, in nats (He et al. 2019; Fu et al. 2019).

    With diagonal Gaussian posteriors q(z|x_i) = N(mu_i, diag(exp(logvar_i))) and one sample z_i ~ q(z|x_i):
        I(x; z) = E_x E_{q(z|x)}[log q(z|x)] - E_{q(z)}[log q(z)]
        E_{q(z|x_i)}[log q(z|x_i)] = -H[q(z|x_i)] = -D/2 log(2 pi) - 1/2 sum_d (1 + logvar_id)   (exact)
        log q(z_i) ~= log (1/N) sum_j q(z_i|x_j)   (the aggregate posterior over all N examples)
    The estimate cannot exceed log N (reached when the posteriors do not overlap): pass the whole split, not
    a batch, and read it against :func:`mi_ceiling`. Shapes: mu, logvar, z are (N, D). The N x N densities are
    computed ``chunk`` rows at a time from matrix products, in float64.
    """
    if not (mu.shape == logvar.shape == z.shape) or mu.dim() != 2:
        raise ValueError(f"mu, logvar, z must share shape (N, D); got {mu.shape}, {logvar.shape}, {z.shape}")
    mu, logvar, z = mu.double(), logvar.double(), z.double()
    n, dim = mu.shape
    log_2pi = math.log(2 * math.pi)
    neg_entropy = (-0.5 * dim * log_2pi - 0.5 * (1 + logvar).sum(-1)).mean()
    inv_var = (-logvar).exp()  # (N, D)
    # sum_d (z_i - mu_j)^2 / var_jd = z_i^2 . (1/var_j) - 2 z_i . (mu_j / var_j) + sum_d mu_jd^2 / var_jd
    const = (mu.pow(2) * inv_var).sum(-1) + logvar.sum(-1) + dim * log_2pi  # (N,)
    log_qz = []
    for s in range(0, n, chunk):
        zc = z[s:s + chunk]
        quad = zc.pow(2) @ inv_var.T - 2 * zc @ (mu * inv_var).T + const.unsqueeze(0)  # (c, N)
        log_qz.append(torch.logsumexp(-0.5 * quad, dim=1) - math.log(n))
    return float(neg_entropy - torch.cat(log_qz).mean())


def mi_ceiling(n: int) -> float:
    """log N: the most :func:`mutual_information` can report over N examples."""
    return math.log(max(n, 1))


# ------------------------------------------------------------------------------------- loss averages


class MetricAccumulator:
    """Sums loss terms over batches and returns weighted means.

    `add(name, total, weight)` adds a summed quantity and what it was summed over (tokens, responses);
    `mean(name)` is sum(total) / sum(weight). `add_batch` records the CVAE terms in their usual units:
        rc_nll   reconstruction NLL per target token (nats)      rc_ppl = exp(rc_nll)
        rc_loss  reconstruction NLL per response (nats)
        kl       KL(q(z|c,x) || p(z|c)) per response (nats)
        bow_loss bag-of-words NLL per response (nats)
        elbo     rc_loss + kl per response: the negative ELBO, lower is better, as in Zhao et al.'s logs
    """

    def __init__(self) -> None:
        self._totals: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def add(self, name: str, total: float | torch.Tensor, weight: float) -> None:
        self._totals[name] = self._totals.get(name, 0.0) + float(total)
        self._weights[name] = self._weights.get(name, 0.0) + float(weight)

    def add_batch(
        self,
        *,
        rc_nll_sum: float | torch.Tensor,
        n_tokens: int,
        kl_sum: float | torch.Tensor,
        n_responses: int,
        bow_loss_sum: float | torch.Tensor = 0.0,
    ) -> None:
        """Record one batch from its summed terms: NLL over its `n_tokens` target tokens, KL and bow loss
        over its `n_responses` responses."""
        self.add("rc_nll", rc_nll_sum, n_tokens)
        self.add("rc_loss", rc_nll_sum, n_responses)
        self.add("kl", kl_sum, n_responses)
        self.add("bow_loss", bow_loss_sum, n_responses)
        self.add("n_tokens", n_tokens, 1)
        self.add("n_responses", n_responses, 1)

    def mean(self, name: str) -> float:
        weight = self._weights.get(name, 0.0)
        return self._totals[name] / weight if weight > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        out = {name: self.mean(name) for name in self._totals if name not in ("n_tokens", "n_responses")}
        for count in ("n_tokens", "n_responses"):
            if count in self._totals:
                out[count] = int(self._totals[count])
        if "rc_nll" in out:
            with np.errstate(over="ignore"):  # a diverged run reports inf, not a crash
                out["rc_ppl"] = float(np.exp(out["rc_nll"]))
        if "rc_loss" in out and "kl" in out:
            out["elbo"] = out["rc_loss"] + out["kl"]
        return out
