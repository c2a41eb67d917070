"""Skip-set strategies: which k decoder layers to skip. One strategy per file, one registry.

Each strategy is a small dataclass with one method, ``select(k, num_layers, metrics,
evaluate)``, returning k layer indices. `metrics` holds per-layer importance measured by
`vllm-adaptive calibrate`; `evaluate(skip)` measures calibration perplexity of a skip set
(only strategies that search use it). First and last layers are never skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vllm_adaptive.skip.balanced import BalancedSkip
from vllm_adaptive.skip.calibrated import CalibratedSkip
from vllm_adaptive.skip.layers import middle_layers
from vllm_adaptive.skip.random import RandomSkip

Evaluate = Callable[[frozenset[int]], float]


class SkipStrategy(Protocol):
    name: str

    def select(self, k: int, num_layers: int, metrics: dict[str, list[float]], evaluate: Evaluate) -> list[int]: ...


__all__ = ["STRATEGIES", "BalancedSkip", "CalibratedSkip", "RandomSkip", "middle_layers"]

STRATEGIES: dict[str, Callable[[], SkipStrategy]] = {
    BalancedSkip.name: BalancedSkip,
    CalibratedSkip.name: CalibratedSkip,
    RandomSkip.name: RandomSkip,
}
