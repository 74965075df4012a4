"""Blind human evaluation with the Sensibleness and Specificity protocol of Adiwardana et al. (2020).

``export`` writes a judging sheet: for each context, the candidates of every system (replies written by
``python -m training quality --samples``) and the true next turn as a control, shuffled, with identical
texts shown once; the key (which candidate came from where) goes to a separate file that raters never see.
``score`` reads one ratings file per rater ({"item", "sensible": [0/1...], "specific": [0/1...]} per item, in
the sheet's candidate order), takes the majority vote per candidate (specific counts only when sensible),
and reports per system the sensible rate, the specific rate and SSA = their mean, each with a 95% bootstrap
interval over contexts; rater agreement (Fleiss' kappa and the mean pairwise agreement); and, for each pair of
systems, on how many contexts one system's replies scored a higher mean SSA than the other's. A round whose
control scores under ``VOID_BELOW`` SSA is marked void.
"""
from __future__ import annotations

import json
import random
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

CONTROL = "control"
VOID_BELOW = 0.7
BOOTSTRAP = 2000


class HumanEvalError(ValueError):
    pass


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise HumanEvalError(f"{path}: cannot read JSON: {e}") from None


def _read_samples(path: Path) -> list[dict[str, Any]]:
    items = []
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise HumanEvalError(f"{path}: {e}") from None
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
            assert isinstance(obj["id"], str) and isinstance(obj["context"], list)
            assert isinstance(obj["replies"], list) and isinstance(obj["reference"], str)
        except (ValueError, KeyError, AssertionError, TypeError):
            raise HumanEvalError(f"{path}:{i}: not a samples line (id, context, reference, replies)") from None
        items.append(obj)
    return items


def export(systems: Sequence[str], out: Path, key: Path, contexts: int = 100, replies: int = 5,
           seed: int = 1) -> dict[str, Any]:
    """Write the sheet and its key; ``systems`` are NAME=SAMPLES.jsonl. Returns the key."""
    if contexts < 1 or replies < 1:
        raise HumanEvalError(f"contexts ({contexts}) and replies ({replies}) must be at least 1")
    named: list[tuple[str, dict[str, dict[str, Any]]]] = []
    for spec in systems:
        name, sep, path = spec.partition("=")
        if not sep or not name or not path:
            raise HumanEvalError(f"expected NAME=SAMPLES.jsonl, got {spec!r}")
        if name == CONTROL or name in (n for n, _ in named):
            raise HumanEvalError(f"system name {name!r} is reserved or repeated")
        named.append((name, {it["id"]: it for it in _read_samples(Path(path))}))
    first = named[0][1]
    ids = [i for i in first if all(i in samples for _, samples in named[1:])][:contexts]
    if not ids:
        raise HumanEvalError("the systems share no context id")
    for i in ids:
        ctx = first[i]["context"]
        for name, samples in named[1:]:
            if samples[i]["context"] != ctx:
                raise HumanEvalError(f"context {i} differs between systems ({named[0][0]} and {name})")
    rng = random.Random(seed)
    sheet, key_items = [], []
    for n_item, cid in enumerate(ids):
        texts: dict[str, list[list[Any]]] = {}
        order: list[str] = []

        def add(text: str, source: list[Any]) -> None:
            norm = " ".join(text.split())
            k = norm.casefold()
            if k not in texts:
                texts[k] = []
                order.append(norm)
            texts[k].append(source)

        for name, samples in named:
            for j, r in enumerate(samples[cid]["replies"][:replies]):
                add(r, [name, j])
        add(first[cid]["reference"], [CONTROL, 0])
        rng.shuffle(order)
        sheet.append({"item": n_item, "context": first[cid]["context"], "candidates": order})
        key_items.append({"item": n_item, "id": cid, "sources": [texts[t.casefold()] for t in order]})
    key_doc = {"systems": [n for n, _ in named] + [CONTROL], "replies_per_system": replies, "seed": seed,
               "items": key_items}
    out.parent.mkdir(parents=True, exist_ok=True)
    key.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(sheet, indent=1, ensure_ascii=False) + "\n")
    key.write_text(json.dumps(key_doc, indent=1) + "\n")
    return key_doc


def _read_sheet(path: Path) -> list[dict[str, Any]]:
    sheet = _load_json(path)
    if not (isinstance(sheet, list) and sheet and all(
            isinstance(it, dict) and isinstance(it.get("item"), int) and isinstance(it.get("context"), list)
            and isinstance(it.get("candidates"), list) and all(isinstance(c, str) for c in it["candidates"])
            for it in sheet)):
        raise HumanEvalError(f"{path}: not a judging sheet (a list of items with 'item', 'context' and "
                             "'candidates', as humaneval export writes it to --out); is it the key?")
    if len({it["item"] for it in sheet}) != len(sheet):
        raise HumanEvalError(f"{path}: an item number appears twice")
    return sheet


def _read_key(path: Path, sheet: list[dict[str, Any]], sheet_path: Path) -> dict[str, Any]:
    key = _load_json(path)
    systems = key.get("systems") if isinstance(key, dict) else None
    items = key.get("items") if isinstance(key, dict) else None
    if not (isinstance(systems, list) and systems and all(isinstance(n, str) for n in systems)
            and isinstance(items, list) and all(isinstance(it, dict) and isinstance(it.get("sources"), list)
                                                for it in items)):
        raise HumanEvalError(f"{path}: not a key (an object with 'systems' and 'items', as humaneval export "
                             "writes it to --key); is it the sheet?")
    if len(items) != len(sheet):
        raise HumanEvalError(f"{path} does not belong to {sheet_path} (item counts differ)")
    for i, (it, k) in enumerate(zip(sheet, items)):
        srcs = k["sources"]
        if len(srcs) != len(it["candidates"]) or not all(
                isinstance(src, list) and src and all(isinstance(s, list) and len(s) == 2 and s[0] in systems
                                                      for s in src) for src in srcs):
            raise HumanEvalError(f"{path}: item {i} does not match the sheet {sheet_path}")
    return key


def _read_ratings(path: Path, sheet: list[dict[str, Any]]) -> list[tuple[list[int], list[int]]]:
    raw = _load_json(path)
    if not isinstance(raw, list):
        raise HumanEvalError(f"{path}: expected a list of ratings")
    by_item = {}
    for r in raw:
        if not isinstance(r, dict) or not isinstance(r.get("item"), int):
            raise HumanEvalError(f"{path}: every rating needs an integer 'item'")
        by_item[r["item"]] = r
    out = []
    for it in sheet:
        r = by_item.get(it["item"])
        if r is None:
            raise HumanEvalError(f"{path}: item {it['item']} is not rated")
        n = len(it["candidates"])
        sens, spec = r.get("sensible"), r.get("specific")
        if not (isinstance(sens, list) and isinstance(spec, list) and len(sens) == n and len(spec) == n
                and all(v in (0, 1) for v in sens + spec)):
            raise HumanEvalError(f"{path}: item {it['item']} needs {n} sensible and {n} specific ratings of 0 or 1")
        out.append(([int(v) for v in sens], [int(a and b) for a, b in zip(sens, spec)]))
    return out


def fleiss_kappa(votes: np.ndarray) -> float:
    """Fleiss' kappa of binary ratings: votes (subjects, raters) of 0/1."""
    n = votes.shape[1]
    if votes.shape[0] == 0 or n < 2:
        return float("nan")
    ones = votes.sum(axis=1)
    counts = np.stack([n - ones, ones], axis=1).astype(float)
    p_i = ((counts * (counts - 1)).sum(axis=1)) / (n * (n - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / counts.sum()
    p_e = (p_j ** 2).sum()
    return float((p_bar - p_e) / (1 - p_e)) if p_e < 1 else 1.0


def _interval(per_context: list[tuple[float, int]], rng: np.random.Generator) -> tuple[float, float, float]:
    """Mean over candidates, and a 95% bootstrap interval resampling contexts."""
    sums = np.array([s for s, _ in per_context], dtype=float)
    counts = np.array([c for _, c in per_context], dtype=float)
    mean = float(sums.sum() / counts.sum())
    idx = rng.integers(0, len(sums), size=(BOOTSTRAP, len(sums)))
    boots = sums[idx].sum(axis=1) / np.maximum(counts[idx].sum(axis=1), 1)
    lo, hi = np.percentile(boots, [2.5, 97.5])
    return mean, float(lo), float(hi)


def score(sheet_path: Path, key_path: Path, ratings: Sequence[Path]) -> dict[str, Any]:
    repeated = [str(p) for i, p in enumerate(ratings) if Path(p).resolve() in {Path(q).resolve() for q in ratings[:i]}]
    if repeated:
        raise HumanEvalError(f"the ratings {', '.join(repeated)} are given twice: one file per rater")
    sheet = _read_sheet(sheet_path)
    key = _read_key(key_path, sheet, sheet_path)
    raters = [_read_ratings(p, sheet) for p in ratings]
    R = len(raters)
    # majority vote per candidate; with an even number of raters a tie counts as 0
    votes_sens, votes_spec = [], []
    per_sys: dict[str, dict[str, list[tuple[float, int]]]] = {}
    per_ctx_ssa: dict[str, list[float | None]] = {s: [] for s in key["systems"]}
    for i in range(len(sheet)):
        sources = key["items"][i]["sources"]
        sums: dict[str, list[float]] = {}
        for c, srcs in enumerate(sources):
            sv = [raters[r][i][0][c] for r in range(R)]
            pv = [raters[r][i][1][c] for r in range(R)]
            votes_sens.append(sv)
            votes_spec.append(pv)
            sens = int(sum(sv) * 2 > R)
            spec = int(sum(pv) * 2 > R) * sens
            for system, _ in srcs:
                acc = sums.setdefault(system, [0.0, 0.0, 0])
                acc[0] += sens
                acc[1] += spec
                acc[2] += 1
        for system in key["systems"]:
            tally = sums.get(system)
            d = per_sys.setdefault(system, {"sensible": [], "specific": []})
            if tally:
                d["sensible"].append((tally[0], int(tally[2])))
                d["specific"].append((tally[1], int(tally[2])))
                per_ctx_ssa[system].append((tally[0] + tally[1]) / (2 * tally[2]))
            else:
                per_ctx_ssa[system].append(None)
    rng = np.random.default_rng(0)
    systems: dict[str, Any] = {}
    for system, d in per_sys.items():
        if not d["sensible"]:
            continue
        sens_iv = _interval(d["sensible"], rng)
        spec_iv = _interval(d["specific"], rng)
        both = [(a[0] + b[0], 2 * a[1]) for a, b in zip(d["sensible"], d["specific"])]
        ssa = _interval(both, rng)
        systems[system] = {"candidates": int(sum(c for _, c in d["sensible"])), "contexts": len(d["sensible"]),
                           "sensible": sens_iv[0], "sensible_ci": sens_iv[1:], "specific": spec_iv[0],
                           "specific_ci": spec_iv[1:], "ssa": ssa[0], "ssa_ci": ssa[1:]}
    vs, vp = np.array(votes_sens), np.array(votes_spec)
    pair_agree = (float(np.mean([np.mean(vs[:, a] == vs[:, b]) for a, b in combinations(range(R), 2)]))
                  if R > 1 else float("nan"))
    agreement: dict[str, Any] = {"raters": R, "fleiss_kappa_sensible": fleiss_kappa(vs),
                                 "fleiss_kappa_specific": fleiss_kappa(vp), "pairwise_agreement_sensible": pair_agree}
    # one rater agrees with no one: null in the JSON (NaN is not JSON), said so in the report
    agreement = {k: None if isinstance(v, float) and np.isnan(v) else v for k, v in agreement.items()}
    prefs = []
    names = [s for s in key["systems"] if s != CONTROL]
    for a, b in combinations(names, 2):
        w = t = l = 0
        for x, y in zip(per_ctx_ssa[a], per_ctx_ssa[b]):
            if x is None or y is None:
                continue
            w, t, l = w + (x > y), t + (x == y), l + (x < y)
        prefs.append({"a": a, "b": b, "a_better": w, "tie": t, "b_better": l})
    control = systems.get(CONTROL, {}).get("ssa")
    return {"systems": systems, "agreement": agreement, "preference": prefs, "control_ssa": control,
            "void": control is None or control < VOID_BELOW, "items": len(sheet),
            "rule": "majority of raters per candidate; specific only when sensible; 95% bootstrap over contexts"}


def report(res: dict[str, Any]) -> str:
    def ci(v: Sequence[float]) -> str:
        return f"[{v[0]:.2f}, {v[1]:.2f}]"

    lines = ["| system | candidates | sensible | specific | SSA |", "| --- | --- | --- | --- | --- |"]
    for name, s in res["systems"].items():
        lines.append(f"| {name} | {s['candidates']} | {s['sensible']:.2f} {ci(s['sensible_ci'])} | "
                     f"{s['specific']:.2f} {ci(s['specific_ci'])} | {s['ssa']:.2f} {ci(s['ssa_ci'])} |")
    a = res["agreement"]
    if a["fleiss_kappa_sensible"] is None:
        lines += ["", f"Raters: {a['raters']}; no agreement to measure with one rater."]
    else:
        lines += ["", f"Raters: {a['raters']}; Fleiss' kappa sensible {a['fleiss_kappa_sensible']:.2f}, specific "
                      f"{a['fleiss_kappa_specific']:.2f}; mean pairwise agreement on sensible "
                      f"{a['pairwise_agreement_sensible']:.2f}."]
    for p in res["preference"]:
        lines.append(f"Per context (mean SSA): {p['a']} higher on {p['a_better']}, {p['b']} higher on "
                     f"{p['b_better']}, tie on {p['tie']}.")
    lines.append("VOID: the control scored under 0.7 SSA." if res["void"] else
                 f"Control SSA {res['control_ssa']:.2f}: the round counts (>= {VOID_BELOW}).")
    return "\n".join(lines) + "\n"
