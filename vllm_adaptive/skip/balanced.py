"""Unified Layer Skipping: k layers spread evenly over the middle, input-independent."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BalancedSkip:
    """Skip k layers evenly spaced between the first and the last layer (ULS)."""

    name: str = "balanced"

    def select(self, k: int, num_layers: int, metrics, evaluate) -> list[int]:
        if not 0 <= k <= num_layers - 2:
            raise ValueError(f"cannot skip {k} of {num_layers} layers (first and last are kept)")
        points = np.linspace(0, num_layers - 1, k + 2)[1:-1]
        return sorted({int(round(p)) for p in points})
