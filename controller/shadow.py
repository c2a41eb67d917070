"""Online shadow check: is a category's cache still within its error bound on live traffic?

A configurable share (`shadow.fraction`) of would-be hits is also sent to the backend; the fresh
answer is compared with the cached one (greedy requests: the same text up to case and spacing;
sampled ones: embeddings at least `shadow.min_answer_similarity` alike). Each category keeps a false-hit estimate with its
one-sided 95 % upper confidence limit (controller.verify.calibrate.upper_bound), on /metrics.

Self-tightening: a mismatch that leaves the upper limit above `max_false_hit_rate` raises the
category's similarity threshold by one step (the evidence then starts afresh, for the new
point). It relaxes by a step only when the checks since the last change show the bound with
room: upper limit at most half the bound, which takes hundreds of clean checks. The load-based
policy keeps its floors: the offset is added on top of the load-adjusted threshold.

What is estimated online is the share of *served hits* whose answer was wrong (what users see);
`calibrate-cache` bounds the share of *different questions* that get a cached answer, which
traffic does not reveal (unserved near-misses are never checked). Where near-misses are as common
as repeats the two are close; where hits are rare, the online share is the larger one, so the
same bound makes the online loop the stricter of the two.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from controller.verify.calibrate import upper_bound

STEP = 0.01
CEILING = 0.999


@dataclass
class CategoryShadow:
    """Evidence since the last change of the category's offset."""

    checks: int = 0
    false_hits: int = 0
    offset: float = 0.0
    total_checks: int = 0
    total_false_hits: int = 0

    @property
    def upper(self) -> float:
        return upper_bound(self.false_hits, self.checks)

    @property
    def rate(self) -> float:
        return self.false_hits / self.checks if self.checks else 0.0


class ShadowMonitor:
    """Per-category shadow-check evidence and the threshold offsets it has earned."""

    def __init__(self) -> None:
        self.categories: dict[str, CategoryShadow] = {}

    def state(self, category: str) -> CategoryShadow:
        return self.categories.setdefault(category, CategoryShadow())

    def threshold(self, category: str, base: float) -> float:
        """The threshold in force: `base` (policy + load) raised by what the checks have shown."""
        offset = self.categories[category].offset if category in self.categories else 0.0
        return min(CEILING, base + offset) if offset else base

    def record(self, category: str, wrong: bool, bound: float | None) -> None:
        """One shadow check's verdict; tightens or relaxes the category against `bound`."""
        s = self.state(category)
        s.checks += 1
        s.total_checks += 1
        s.false_hits += wrong
        s.total_false_hits += wrong
        if bound is None:
            return
        if wrong and s.upper > bound:
            s.offset = round(s.offset + STEP, 6)
            s.checks = s.false_hits = 0
        elif s.offset > 0 and s.upper <= bound / 2:
            s.offset = round(max(0.0, s.offset - STEP), 6)
            s.checks = s.false_hits = 0


def answer_text(response: dict) -> str:
    """The answer's text (chat message content or completion text) of an OpenAI-style response."""
    choices = response.get("choices") or [{}]
    first = choices[0]
    return str((first.get("message") or {}).get("content") or first.get("text") or "")


def same_answer(cached: str, fresh: str, encode: Callable[[list[str]], np.ndarray], min_similarity: float,
                greedy: bool) -> bool:
    """Greedy requests: the same text up to case and spacing (greedy decoding of the same question
    gives the same answer; a paraphrase hit whose fresh answer is worded differently counts as a
    false hit, so the estimate errs on the safe side). Sampled requests: embeddings at least
    `min_similarity` alike."""
    if " ".join(cached.split()).casefold() == " ".join(fresh.split()).casefold():
        return True
    if greedy:
        return False
    a, b = encode([cached, fresh])
    return float(a @ b) >= min_similarity
