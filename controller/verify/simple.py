"""The two verifiers without learned weights: cosine alone (today's behaviour) and guards."""

from __future__ import annotations

from dataclasses import dataclass

from controller.verify.features import mismatches


@dataclass
class ThresholdVerifier:
    """Accepts every candidate the index proposed: the decision is the similarity threshold alone."""

    name: str = "threshold"

    def score(self, query: str, stored: str, similarity: float) -> float:
        return 1.0


@dataclass
class GuardVerifier:
    """Rejects a candidate whose numbers, dates, units, negation, names, comparison or scope words
    differ from the query's: the edits that change the answer but hardly move an embedding."""

    name: str = "guards"

    def score(self, query: str, stored: str, similarity: float) -> float:
        return 0.0 if mismatches(query, stored) else 1.0
