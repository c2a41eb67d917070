"""Shared arithmetic of the allocation strategies: tiers of equal size, water-filled KV shares."""

from __future__ import annotations

from collections.abc import Sequence

from vllm_adaptive.kv.layout import KV, Budget, SinkWindow, sink_blocks


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


def floor_tokens(block_size: int, sink: int) -> int:
    """The least KV a windowed tier holds: a one-block window (two blocks held) and the sink blocks."""
    return (2 + sink_blocks(sink, block_size)) * block_size


def to_budgets(
    tier_tokens: Sequence[float], tier_layers: Sequence[Sequence[int]], num_layers: int,
    reference_tokens: int, block_size: int, sink: int = 0,
) -> list[Budget]:
    """Per-layer budgets from the KV each tier may hold (in tokens' worth of bytes).

    vLLM holds a window of W tokens in up to W/block + 1 blocks (the window rarely starts on a
    block boundary), so a tier allowed k blocks gets a window of k-1 blocks; with `sink` tokens,
    the sink blocks come out of the same k. A tier allowed the reference context (or more) stays
    full. The floor is a one-block window (`floor_tokens`).
    """
    out: list[Budget] = [KV.FULL] * num_layers
    full_blocks = -(-reference_tokens // block_size)
    held_by_sinks = sink_blocks(sink, block_size)
    for tokens, layers in zip(tier_tokens, tier_layers, strict=True):
        blocks = max(2 + held_by_sinks, round(tokens / block_size))
        window = (blocks - 1 - held_by_sinks) * block_size
        for layer in layers:
            if blocks >= full_blocks:
                out[layer] = KV.FULL
            else:
                out[layer] = SinkWindow(sink, window) if sink else window
    return out


def split_tiers(order: Sequence[int], tier_size: int) -> list[list[int]]:
    """Consecutive tiers of `tier_size` layers from `order` (which must divide evenly)."""
    if tier_size < 1 or len(order) % tier_size:
        raise ValueError(
            f"tier size {tier_size} does not divide {len(order)} layers: vLLM's KV groups need equal "
            "layer counts (it would pad with unused layers)"
        )
    return [list(order[i : i + tier_size]) for i in range(0, len(order), tier_size)]
