"""Verifiers: the second stage of a cache lookup. The index proposes the top-k stored questions
above a recall threshold; a verifier accepts at most one of them.

A repeat (the same question re-typed: case, punctuation, a greeting, a typo; `repeat.py`) is
proposed at any similarity and scores 1.0 under every verifier.

Each strategy is a small class with one method, ``score(query, stored, similarity) -> [0, 1]``;
a candidate is accepted when its score reaches the category's ``min_score`` (and the best
accepted candidate wins). One strategy per file, one registry, as in ``vllm_adaptive.skip``.
No model besides the sentence encoder: guards are regexes and word lists, the learned scorer
is a logistic regression with a dozen weights shipped in ``learned.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol

from controller.verify.learned import GuardedLearnedVerifier, LearnedVerifier
from controller.verify.repeat import is_repeat
from controller.verify.simple import GuardVerifier, ThresholdVerifier


class Verifier(Protocol):
    name: str

    def score(self, query: str, stored: str, similarity: float) -> float: ...


VERIFIERS: dict[str, Callable[[], Verifier]] = {
    ThresholdVerifier.name: ThresholdVerifier,
    GuardVerifier.name: GuardVerifier,
    LearnedVerifier.name: LearnedVerifier,
    GuardedLearnedVerifier.name: GuardedLearnedVerifier,
}


def load(name: str) -> Verifier:
    """The verifier called `name`."""
    if name not in VERIFIERS:
        raise ValueError(f"unknown verifier {name!r}; known: {', '.join(VERIFIERS)}")
    return VERIFIERS[name]()


def score(verifier: Verifier, query: str, stored: str, similarity: float) -> float:
    """The verifier's score, but 1.0 for a repeat (controller.verify.repeat): the same question
    typed again whatever a learned scorer makes of its length."""
    if is_repeat(query, stored):
        return 1.0
    return verifier.score(query, stored, similarity)


def proposed(query: str, stored: str, similarity: float, threshold: float) -> bool:
    """Whether the index's candidate goes to the verifier: at or above the recall threshold, or
    a repeat at any similarity (a typo or a "Thanks!" can take a repeat's cosine below it)."""
    return similarity >= threshold or is_repeat(query, stored)


def choose(verifier: Verifier, min_score: float, query: str,
           candidates: Sequence[tuple[str, float]]) -> int | None:
    """Index of the accepted candidate among (stored question, similarity), or None.

    The highest score at or above `min_score` wins; ties go to the more similar candidate.
    """
    best, best_key = None, None
    for i, (stored, similarity) in enumerate(candidates):
        s = score(verifier, query, stored, similarity)
        if s >= min_score and (best_key is None or (s, similarity) > best_key):
            best, best_key = i, (s, similarity)
    return best


__all__ = ["VERIFIERS", "GuardVerifier", "GuardedLearnedVerifier", "LearnedVerifier", "ThresholdVerifier",
           "Verifier", "choose", "is_repeat", "load", "proposed", "score"]
