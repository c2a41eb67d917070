"""Random skip set: the control every other strategy must beat."""

from __future__ import annotations

import random as _random
from dataclasses import dataclass

from vllm_adaptive.skip.layers import middle_layers


@dataclass
class RandomSkip:
    """k layers drawn uniformly from the middle layers (seeded, reproducible)."""

    name: str = "random"
    seed: int = 0

    def select(self, k: int, num_layers: int, metrics, evaluate) -> list[int]:
        return sorted(_random.Random(self.seed * 1000 + k).sample(middle_layers(num_layers), k))
