"""Shared arithmetic of the allocation strategies: tiers of equal size, water-filled KV shares."""

from __future__ import annotations

from collections.abc import Sequence

from vllm_adaptive.kv.layout import KV, Budget


def water_fill(weights: Sequence[float], mean: float, cap: float, floor: float) -> list[float]:
    """Values proportional to `weights`, clipped to [floor, cap], whose mean is `mean`.

    Bisection on the scale: the clipped sum is monotone in it. Used to give a total KV
    budget to tiers in proportion to their need without any tier exceeding full context.
    """
    if not floor <= mean <= cap:
        raise ValueError(f"mean budget {mean} outside [{floor}, {cap}]")
    target = mean * len(weights)
    lo, hi = 0.0, cap / max(min(w for w in weights if w > 0), 1e-12) if any(w > 0 for w in weights) else 0.0

    def total(scale: float) -> float:
        return sum(min(cap, max(floor, w * scale)) for w in weights)

    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if total(mid) < target else (lo, mid)
    return [min(cap, max(floor, w * hi)) for w in weights]


def to_budgets(
    tier_tokens: Sequence[float], tier_layers: Sequence[Sequence[int]], num_layers: int,
    reference_tokens: int, block_size: int,
) -> list[Budget]:
    """Per-layer budgets from the KV each tier may hold (in tokens' worth of bytes).

    vLLM holds a window of W tokens in up to W/block + 1 blocks (the window rarely starts on a
    block boundary), so a tier allowed k blocks gets a window of k-1 blocks; a tier allowed the
    reference context (or more) stays full. The floor is two blocks (a one-block window).
    """
    out: list[Budget] = [KV.FULL] * num_layers
    full_blocks = -(-reference_tokens // block_size)
    for tokens, layers in zip(tier_tokens, tier_layers, strict=True):
        blocks = max(2, round(tokens / block_size))
        for layer in layers:
            out[layer] = KV.FULL if blocks >= full_blocks else (blocks - 1) * block_size
    return out


def split_tiers(order: Sequence[int], tier_size: int) -> list[list[int]]:
    """Consecutive tiers of `tier_size` layers from `order` (which must divide evenly)."""
    if tier_size < 1 or len(order) % tier_size:
        raise ValueError(
            f"tier size {tier_size} does not divide {len(order)} layers: vLLM's KV groups need equal "
            "layer counts (it would pad with unused layers)"
        )
    return [list(order[i : i + tier_size]) for i in range(0, len(order), tier_size)]
