"""Assigns a query to a policy category: keyword rules, then a learned model (or centroids).

Order, first match wins:
1. keyword rules of the policy YAML, in YAML order (an operator's explicit word always wins);
2. with `classifier.weights` in the policy: a multinomial logistic regression over the query's
   sentence embedding (the vector the cache already computed, so no second model on the hot
   path). When its top probability is below `classifier.confidence_floor`, the query gets the
   strictest policy among `default_category` and the model's two likeliest categories
   (uncacheable first, then the highest similarity threshold; the default wins ties), so
   uncertainty never loosens a policy: a query that may be time-sensitive is treated as such
   (uncacheable) even when the default is cacheable. The YAML examples are folded into the model's training data
   (`adaptive-controller train-classifier --policy`), not consulted at run time;
3. without weights: the category whose YAML example centroid is closest, if at least
   `min_category_similarity`; otherwise `default_category`.

Weights file (.npz, written by controller/train_classifier.py, no pickles): `weights` (k, dim),
`bias` (k,), `categories` (k,), `meta` (JSON: encoder, training settings, held-back report) and
the held-back `test_probs` / `test_labels`, so `check` can report the model under any floor.
"""

from __future__ import annotations

import json
import logging
import re
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from controller.embeddings import Encoder
from policies.schema import PolicyConfig

log = logging.getLogger(__name__)
FORMAT = 1
ARRAYS = ("weights", "bias", "categories", "meta", "test_probs", "test_labels")


class ClassifierError(ValueError):
    """A weights file that cannot be used; the message names the file and the reason."""


class Assignment(NamedTuple):
    """A query's category and how it was chosen."""

    category: str
    confidence: float | None  # model probability or centroid similarity; None for keyword / default
    source: str  # "keyword", "model", "low_confidence", "centroid" or "default"


def strictness(config: PolicyConfig) -> dict[str, tuple[bool, float]]:
    """How strictly each category serves from the cache (larger is stricter): uncacheable, then threshold."""
    return {c.name: (not c.policy.cacheable, c.policy.similarity_threshold) for c in config.categories}


def route(probs: np.ndarray, names: Sequence[str], floor: float, default: str,
          strict: dict[str, tuple[bool, float]]) -> Assignment:
    """The model's category, or, below `floor`, the strictest of the default and the two likeliest."""
    order = np.argsort(probs)
    best = float(probs[order[-1]])
    if best >= floor:
        return Assignment(names[order[-1]], best, "model")
    candidates = [default, *(names[i] for i in order[-2:][::-1])]
    return Assignment(max(candidates, key=strict.__getitem__), best, "low_confidence")


@dataclass(frozen=True)
class LinearModel:
    """Softmax regression over unit sentence vectors: p = softmax(W v + b)."""

    categories: tuple[str, ...]
    weights: np.ndarray
    bias: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)
    test_probs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    test_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """Class probabilities for one vector (k,) or a batch (n, k)."""
        logits = vectors @ self.weights.T + self.bias
        logits = logits - logits.max(axis=-1, keepdims=True)
        e = np.exp(logits)
        return e / e.sum(axis=-1, keepdims=True)

    def save(self, path: Path) -> None:
        """Write the .npz weights file (plain arrays and a JSON string; loads without pickle)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as fh:  # np.savez would append ".npz" to other suffixes
            np.savez(
                fh, weights=self.weights.astype(np.float32), bias=self.bias.astype(np.float32),
                categories=np.array(self.categories), meta=np.array(json.dumps({"format": FORMAT, **self.meta})),
                test_probs=self.test_probs.astype(np.float32), test_labels=self.test_labels.astype(np.int64),
            )


def load_model(path: Path, dim: int) -> LinearModel:
    """Read and validate a weights file for `dim`-sized vectors; ClassifierError says what is wrong."""
    def bad(reason: str) -> ClassifierError:
        return ClassifierError(f"classifier weights {path}: {reason}")

    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in ARRAYS if name not in npz.files]
            if missing:
                raise bad(f"missing arrays {', '.join(missing)} (not written by train-classifier?)")
            arrays = {name: npz[name] for name in ARRAYS}
    except FileNotFoundError:
        raise bad("no such file (train one with `adaptive-controller train-classifier`)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        if isinstance(exc, ClassifierError):
            raise
        raise bad(f"not a readable .npz weights file ({exc})") from None
    try:
        meta = json.loads(str(arrays["meta"]))
    except ValueError:
        raise bad("meta is not JSON") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise bad(f"unsupported format {meta.get('format') if isinstance(meta, dict) else meta!r}; expected {FORMAT}")
    w, b, names = arrays["weights"], arrays["bias"], arrays["categories"]
    k = len(names) if names.ndim == 1 else 0
    if names.dtype.kind != "U" or k < 2 or len(set(names.tolist())) != k:
        raise bad("categories must be at least two distinct names")
    if w.shape != (k, dim) or b.shape != (k,):
        raise bad(f"weights {w.shape} / bias {b.shape} do not fit {k} categories x {dim}-dim embeddings")
    if not (np.isfinite(w).all() and np.isfinite(b).all()):
        raise bad("weights contain NaN or infinity")
    probs, labels = arrays["test_probs"], arrays["test_labels"]
    if probs.ndim != 2 or probs.shape != (len(labels), k) or (len(labels) and not 0 <= labels.min() <= labels.max() < k):
        raise bad("held-back predictions do not match the categories")
    return LinearModel(tuple(names.tolist()), w.astype(np.float32), b.astype(np.float32), meta, probs, labels)


def for_policy(model: LinearModel, config: PolicyConfig, path: Path) -> LinearModel:
    """`model` without the categories the policy no longer has (the softmax over the rest shares
    out their probability, so their queries still land somewhere, strictly when uncertain)."""
    names = {c.name for c in config.categories}
    keep = [i for i, n in enumerate(model.categories) if n in names]
    if len(keep) == len(model.categories):
        return model
    if len(keep) < 2:
        raise ClassifierError(f"classifier weights {path}: fewer than two of its categories "
                              f"({', '.join(model.categories)}) are in the policy; retrain")
    dropped = [n for n in model.categories if n not in names]
    log.warning("classifier weights %s: categories %s are not in the policy; never predicted", path, ", ".join(dropped))
    rows = np.isin(model.test_labels, keep)
    probs = model.test_probs[rows][:, keep]
    remap = {old: new for new, old in enumerate(keep)}
    return LinearModel(
        tuple(model.categories[i] for i in keep), model.weights[keep], model.bias[keep],
        {**model.meta, "dropped_categories": dropped}, probs / probs.sum(axis=1, keepdims=True),
        np.array([remap[int(label)] for label in model.test_labels[rows]], dtype=np.int64),
    )


class Classifier:
    """Keyword rules, then the learned model (with its confidence floor) or the example centroids."""

    def __init__(self, config: PolicyConfig, encoder: Encoder, base_dir: Path | None = None) -> None:
        """`base_dir`: where a relative `classifier.weights` path is resolved (the policy file's folder)."""
        self.default = config.default_category
        self.min_similarity = config.min_category_similarity
        self._strict = strictness(config)
        self._rules = [
            (c.name, re.compile(r"\b(?:" + "|".join(map(re.escape, c.keywords)) + r")\b", re.I))
            for c in config.categories
            if c.keywords
        ]
        self.model: LinearModel | None = None
        self.floor = 0.0
        self.weights_path: Path | None = None
        if config.classifier is not None:
            if base_dir is None:
                raise ClassifierError("classifier weights: the policy file's folder is needed to find them")
            self.weights_path = base_dir / config.classifier.weights
            self.model = for_policy(load_model(self.weights_path, encoder.dim), config, self.weights_path)
            self.floor = config.classifier.confidence_floor
            self._names: list[str] = list(self.model.categories)
            self._centroids = np.zeros((0, encoder.dim), dtype=np.float32)
            return
        with_examples = [c for c in config.categories if c.examples]
        self._names = [c.name for c in with_examples]
        centroids = [encoder.encode(c.examples).mean(axis=0) for c in with_examples]
        self._centroids = (
            np.stack([v / np.linalg.norm(v) for v in centroids])
            if centroids
            else np.zeros((0, encoder.dim), dtype=np.float32)
        )

    def assign(self, text: str, vector: np.ndarray) -> Assignment:
        """The category of a query (`vector`: its unit embedding, as the cache computed it)."""
        for name, pattern in self._rules:
            if pattern.search(text):
                return Assignment(name, None, "keyword")
        if self.model is not None:
            return route(self.model.probabilities(vector), self._names, self.floor, self.default, self._strict)
        if len(self._names):
            sims = self._centroids @ vector
            best = int(np.argmax(sims))
            if sims[best] >= self.min_similarity:
                return Assignment(self._names[best], float(sims[best]), "centroid")
        return Assignment(self.default, None, "default")

    def most_confident(self, readings: list[tuple[str, np.ndarray]]) -> Assignment:
        """The assignment of the reading (text, vector) the classifier is surest of (a keyword
        rule is certain, the default a guess; ties go to the first). The controller reads a query
        as sent and without a greeting or thanks around it: unwrapped, "...? Thanks!" is no longer
        time_sensitive, while "Hi, how are you doing today?" keeps the chat its greeting says."""
        def sureness(a: Assignment) -> float:
            if a.confidence is not None:
                return a.confidence
            return 2.0 if a.source == "keyword" else -1.0  # the default is a guess

        return max((self.assign(text, vector) for text, vector in readings), key=sureness)

    def classify(self, text: str, vector: np.ndarray) -> tuple[str, float | None]:
        """(category, confidence): `assign` without the source."""
        a = self.assign(text, vector)
        return a.category, a.confidence
