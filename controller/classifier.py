"""Assigns a query to a policy category: keyword rules first, then nearest centroid."""

from __future__ import annotations

import re

import numpy as np

from controller.embeddings import Encoder
from policies.schema import PolicyConfig


class Classifier:
    """Keyword rules (in YAML order) win; otherwise the category whose example centroid is
    closest, if at least `min_category_similarity`; otherwise the default category."""

    def __init__(self, config: PolicyConfig, encoder: Encoder) -> None:
        self.default = config.default_category
        self.min_similarity = config.min_category_similarity
        self._rules = [
            (c.name, re.compile(r"\b(?:" + "|".join(map(re.escape, c.keywords)) + r")\b", re.I))
            for c in config.categories
            if c.keywords
        ]
        with_examples = [c for c in config.categories if c.examples]
        self._names = [c.name for c in with_examples]
        centroids = [encoder.encode(c.examples).mean(axis=0) for c in with_examples]
        self._centroids = (
            np.stack([v / np.linalg.norm(v) for v in centroids])
            if centroids
            else np.zeros((0, encoder.dim), dtype=np.float32)
        )

    def classify(self, text: str, vector: np.ndarray) -> tuple[str, float | None]:
        """(category, centroid similarity or None when a keyword rule decided)."""
        for name, pattern in self._rules:
            if pattern.search(text):
                return name, None
        if len(self._names):
            sims = self._centroids @ vector
            best = int(np.argmax(sims))
            if sims[best] >= self.min_similarity:
                return self._names[best], float(sims[best])
        return self.default, None
