"""A logistic regression over cosine, guard and lexical features: soft where the guards are hard.

A paraphrase may drop a name or swap "bigger" for "larger and more"; a guard then rejects it
outright, while the learned scorer weighs the mismatch against how close the two questions are.
Weights (a dozen floats) ship in ``learned.json``; ``python -m controller.verify train``
reproduces them from the training split of ``bench.hard_negatives``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np

from controller.verify.features import GUARDS, signature

WEIGHTS = Path(__file__).with_name("learned.json")
FEATURES = ("cosine", "word_jaccard", "length_ratio", "log_words", *(f"guard_{g}" for g in GUARDS), "guards_failed")


def features(query: str, stored: str, similarity: float) -> list[float]:
    """The feature vector of one (query, stored question) pair, in FEATURES order."""
    a, b = signature(query), signature(stored)
    union = len(a.words | b.words) or 1
    na, nb = len(a.words) or 1, len(b.words) or 1
    failed = [float(differs(a, b)) for differs in GUARDS.values()]
    return [similarity, len(a.words & b.words) / union, min(na, nb) / max(na, nb),
            math.log(min(na, nb)), *failed, sum(failed)]


@dataclass(frozen=True)
class Model:
    """Standardised logistic regression: p = sigmoid(((x - mean) / scale) . coef + bias)."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray
    bias: float
    meta: dict = field(default_factory=dict)

    def prob(self, x: np.ndarray) -> np.ndarray:
        z = ((x - self.mean) / self.scale) @ self.coef + self.bias
        return 1.0 / (1.0 + np.exp(-z))

    def to_json(self) -> dict:
        return {"features": list(FEATURES), "mean": self.mean.tolist(), "scale": self.scale.tolist(),
                "coef": self.coef.tolist(), "bias": self.bias, "meta": self.meta}


@lru_cache(maxsize=4)
def load_model(path: Path = WEIGHTS) -> Model:
    """The shipped weights (checked against the feature list they were trained for)."""
    raw = json.loads(path.read_text())
    if raw["features"] != list(FEATURES):
        raise ValueError(f"{path}: trained for features {raw['features']}, code has {list(FEATURES)}; "
                         "retrain with `python -m controller.verify train`")
    return Model(np.array(raw["mean"]), np.array(raw["scale"]), np.array(raw["coef"]), float(raw["bias"]),
                 raw.get("meta", {}))


def fit(x: np.ndarray, y: np.ndarray, l2: float = 1.0, iterations: int = 50) -> Model:
    """L2-regularised logistic regression by Newton's method (a dozen features: exact and fast)."""
    mean = x.mean(axis=0)
    scale = x.std(axis=0)
    scale[scale == 0] = 1.0
    z = np.hstack([(x - mean) / scale, np.ones((len(x), 1))])
    w = np.zeros(z.shape[1])
    reg = np.full(z.shape[1], l2)
    reg[-1] = 0.0  # no penalty on the bias
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(z @ w)))
        grad = z.T @ (p - y) + reg * w
        hess = (z * (p * (1 - p))[:, None]).T @ z + np.diag(reg)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-8:
            break
    return Model(mean, scale, w[:-1], float(w[-1]))


@dataclass
class LearnedVerifier:
    """Probability that the stored question has the query's answer, from the shipped weights."""

    name: str = "learned"

    def score(self, query: str, stored: str, similarity: float) -> float:
        return float(load_model().prob(np.array(features(query, stored, similarity))))


@dataclass
class GuardedLearnedVerifier:
    """The learned score, but zero when any guard fails: hard guards, soft ranking of the rest."""

    name: str = "guarded_learned"

    def score(self, query: str, stored: str, similarity: float) -> float:
        x = features(query, stored, similarity)
        if x[-1] > 0:
            return 0.0
        return float(load_model().prob(np.array(x)))
