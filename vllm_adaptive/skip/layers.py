"""Which layers a skip strategy may choose from."""

from __future__ import annotations


def middle_layers(num_layers: int) -> list[int]:
    """All but the first and the last layer (they are always kept)."""
    return list(range(1, num_layers - 1))
