"""Operating points from labelled pairs: per category, the retrieval threshold and verifier
setting that serve the most right answers while the false-hit rate stays provably under the
category's bound.

The bound is on the share of *different* questions (labelled negatives) that would be served
a cached answer, and it must hold for the one-sided 95 % Clopper-Pearson upper confidence
limit, not just the point estimate: 0 false hits in 100 negatives does not show a 1 % rate
(the limit is 3 %), so a category with too little labelled data is refused, with the reason.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from controller import verify
from controller.embeddings import encode_many

# 0.50 .. 0.99, then finer: negations and changed numbers often score above 0.99.
THRESHOLDS = np.round(np.concatenate([np.arange(0.50, 0.99, 0.01), np.arange(0.990, 0.9995, 0.001)]), 3)
MIN_SCORES = np.round(np.arange(0.05, 0.995, 0.01), 2)
CONFIDENCE = 0.95


def read_pairs(path: Path) -> list[dict]:
    """Labelled pairs as JSON lines (gzip if *.gz): {"stored", "query", "label"} plus optional
    "category" and "kind"; QQP's {"a", "b", "duplicate"} is read as stored/query/label."""
    opener = gzip.open if path.suffix == ".gz" else open
    out = []
    with opener(path, "rt") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                raw = json.loads(line)
                if not isinstance(raw, dict):
                    raise AttributeError(type(raw).__name__)
                rec = {**raw, "stored": raw.get("stored", raw.get("a")), "query": raw.get("query", raw.get("b")),
                       "label": raw.get("label", raw.get("duplicate")), "category": raw.get("category"),
                       "kind": raw.get("kind") or ("positive" if raw.get("label", raw.get("duplicate")) else "negative")}
                rec.setdefault("source", "")
            except (json.JSONDecodeError, AttributeError) as exc:
                raise ValueError(f"{path}:{n}: not a JSON object: {exc}") from None
            if not isinstance(rec["stored"], str) or not isinstance(rec["query"], str) or not isinstance(rec["label"], bool):
                raise ValueError(f"{path}:{n}: needs string 'stored' and 'query' (or 'a', 'b') and boolean 'label' (or 'duplicate')")
            out.append(rec)
    if not out:
        raise ValueError(f"{path}: no labelled pairs")
    return out


def similarities(records: list[dict], encoder, batch: int = 64, cache: Path | None = None) -> np.ndarray:
    """Cosine similarity of each (stored, query) pair, each distinct text encoded once. With `cache`, the result is kept beside
    the pairs file, keyed by its contents and the encoder (training and benchmarks share it)."""
    if cache is not None:
        digest = hashlib.sha256(cache.read_bytes()).hexdigest()[:12]
        saved = cache.with_name(f"{cache.name.split('.')[0]}.{encoder.name}.{digest}.sims.npy")
        if saved.exists():
            return np.load(saved)
        sims = similarities(records, encoder, batch)
        np.save(saved, sims)
        return sims
    vectors = encode_texts({t for r in records for t in (r["stored"], r["query"])}, encoder, batch)
    return np.array([float(vectors[r["stored"]] @ vectors[r["query"]]) for r in records], dtype=np.float32)


def encode_texts(texts: Iterable[str], encoder, batch: int = 64) -> dict[str, np.ndarray]:
    """Each text's embedding, batched by length (padding is most of the cost)."""
    distinct = list(set(texts))
    return dict(zip(distinct, encode_many(encoder, distinct, batch)))


def verifier_scores(records: list[dict], sims: np.ndarray, names: Iterable[str] = verify.VERIFIERS) -> dict[str, np.ndarray]:
    """Each verifier's score of every pair."""
    out = {}
    for name in names:
        v = verify.load(name)
        out[name] = np.array([verify.score(v, r["query"], r["stored"], float(s)) for r, s in zip(records, sims)])
    return out


def upper_bound(k: int, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson upper limit of a rate observed as k in n (bisection on the
    binomial CDF; no SciPy on the hot machines)."""
    if n == 0:
        return 1.0
    if k >= n:
        return 1.0
    alpha = 1 - confidence

    def cdf(p: float) -> float:  # P(X <= k) for X ~ Binomial(n, p)
        logs = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1)
                + i * math.log(p) + (n - i) * math.log1p(-p) for i in range(k + 1)]
        top = max(logs)
        return math.exp(top) * sum(math.exp(v - top) for v in logs)

    lo, hi = k / n, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if cdf(mid) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


def allowed_false_hits(n: int, bound: float, confidence: float = CONFIDENCE) -> int:
    """Most false hits among n negatives whose upper limit is still within `bound` (-1: none)."""
    k = -1
    while k + 1 < n and upper_bound(k + 1, n, confidence) <= bound:
        k += 1
    return k


def negatives_needed(bound: float, confidence: float = CONFIDENCE) -> int:
    """Labelled negatives needed before even zero false hits shows the bound: (1-bound)^n <= 1-confidence."""
    return math.ceil(math.log(1 - confidence) / math.log(1 - bound))


@dataclass(frozen=True)
class OperatingPoint:
    """A calibrated setting and what it measured on the pairs it was calibrated on."""

    threshold: float
    verifier: str
    min_score: float
    precision: float
    recall: float
    false_hit_rate: float
    false_hit_upper: float
    positives: int
    negatives: int

    def measured(self) -> dict:
        d = asdict(self)
        for key in ("threshold", "verifier", "min_score"):
            d.pop(key)
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items()}


class Refusal(Exception):
    """The labelled data cannot show the category's bound; the message says why."""


def measure(accept: np.ndarray, labels: np.ndarray, confidence: float = CONFIDENCE) -> dict:
    """Precision, recall and false-hit rate (with its upper limit) of an acceptance mask."""
    pos, neg = int(labels.sum()), int((~labels).sum())
    tp, fp = int((accept & labels).sum()), int((accept & ~labels).sum())
    return {"precision": tp / (tp + fp) if tp + fp else 1.0, "recall": tp / pos if pos else 0.0,
            "false_hit_rate": fp / neg if neg else 0.0, "false_hit_upper": upper_bound(fp, neg, confidence),
            "positives": pos, "negatives": neg, "hits": tp, "false_hits": fp}


def repeats(records: list[dict]) -> np.ndarray:
    """Which pairs are repeats (controller.verify.repeat): proposed and accepted at any setting."""
    return np.array([verify.is_repeat(r["query"], r["stored"]) for r in records], dtype=bool)


def calibrate(sims: np.ndarray, labels: np.ndarray, scores: dict[str, np.ndarray], bound: float,
              confidence: float = CONFIDENCE, thresholds: np.ndarray = THRESHOLDS,
              kinds: np.ndarray | None = None, repeated: np.ndarray | None = None) -> OperatingPoint:
    """The (threshold, verifier, min_score) with the highest recall whose false-hit upper limit
    is within `bound`; ties go to higher precision, then to the stricter threshold.

    `repeated` marks the pairs that are repeats (`repeats()`): the cache serves them whatever
    the threshold, so they count as accepted at every setting (the verifiers score them 1.0).

    With `kinds` (the kind of each pair, e.g. negation, entity, QQP non-duplicate), the bound
    must also hold for every kind of negative with enough pairs to show it: the traffic's mix
    of near-misses is unknown, so no single kind may carry the false hits the others leave room for.
    """
    labels = labels.astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0:
        raise Refusal("no labelled positives (paraphrases or repeats): recall cannot be measured")
    need = negatives_needed(bound, confidence)
    if neg < need:
        raise Refusal(f"{neg} labelled negatives: even 0 false hits gives a {confidence:.0%} upper limit of "
                      f"{upper_bound(0, neg, confidence):.4f} > max_false_hit_rate {bound}; needs >= {need}")
    groups = [(~labels, allowed_false_hits(neg, bound, confidence))]
    if kinds is not None:
        for kind in sorted(set(kinds[~labels])):
            mask = ~labels & (kinds == kind)
            if mask.sum() >= need:
                groups.append((mask, allowed_false_hits(int(mask.sum()), bound, confidence)))
    always = np.zeros(labels.size, bool) if repeated is None else repeated.astype(bool)
    best: tuple | None = None
    for name, score in scores.items():
        grid = MIN_SCORES if np.unique(score).size > 2 else np.array([1.0])
        for m in grid:
            ok = score >= m
            for t in thresholds:
                accept = (ok & (sims >= t)) | always
                if any(int((accept & mask).sum()) > k for mask, k in groups):
                    continue
                tp = int((accept & labels).sum())
                fp = int((accept & ~labels).sum())
                key = (tp, tp / (tp + fp) if tp + fp else 0.0, t)
                if tp and (best is None or key > best[0]):
                    best = (key, name, float(m), float(t), fp)
    if best is None:
        raise Refusal(f"no threshold and verifier setting serves any labelled positive with at most "
                      f"{groups[0][1]} false hits in {neg} negatives (upper limit {bound})"
                      + (" and within the bound on each kind of negative" if len(groups) > 1 else ""))
    (tp, precision, _), name, m, t, fp = best
    return OperatingPoint(t, name, m, precision, tp / pos, fp / neg, upper_bound(fp, neg, confidence), pos, neg)
