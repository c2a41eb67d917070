"""What vLLM does with per-layer KV budgets: its KV-cache groups, pool size and blocks per sequence.

The plugin gives a layer with a token budget W a sliding window of W tokens
(`Attention(per_layer_sliding_window=W)` -> vLLM `SlidingWindowSpec`); a layer with a
`SinkWindow(S, W)` budget keeps its first S tokens (attention sinks, StreamingLLM) and its latest
W (`vllm_adaptive.core.sink_window`: the sink blocks stay, the blocks between them and the window
are freed); a layer with budget "none" is not built at all, so it has no KV spec. vLLM's hybrid
KV-cache manager then groups layers by spec and frees a windowed layer's blocks once they fall
out of its window.

This module predicts the result with vLLM 0.32.0's rules, so tests can count blocks against
it and the calibrator can state what a budget buys. Limits of the mechanism (all layers of
SmolLM2 have the same page size, which is the case this covers):
* every group holds the same number of layers (vLLM pads the smaller ones with unused
  layers, wasting memory), so budgets come in *tiers* of equal layer counts;
* one block of the pool holds one page of every layer of the widest group, so the pool's
  block count is `KV bytes // (group size x page bytes)`;
* sink tokens are held in whole blocks: S sink tokens cost ceil(S / block) blocks per layer;
* windows are per layer, not per head, and fixed at start-up (the pool is sized once).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from math import ceil


class KV(Enum):
    """A layer's KV budget when it is not a window of n tokens (named, so that a budget of
    "no KV" can never be mistaken for a window of 0 or "full" for a missing value)."""

    FULL = "full"  # every token of the context
    NONE = "none"  # no KV at all: the layer is skipped (not built)


@dataclass(frozen=True)
class SinkWindow:
    """A layer's budget of its first `sink` tokens and its latest `window`: a query at position q
    sees key k when k <= q and (k < sink or q - k < window). The first tokens of a sequence
    collect attention whatever they say (attention sinks); a window without them loses them."""

    sink: int
    window: int

    def __post_init__(self) -> None:
        if self.sink < 1 or self.window < 1:
            raise ValueError(f"a sink + window budget needs sink >= 1 and window >= 1, got {self}")


#: A layer's budget: KV.FULL, KV.NONE, n >= 1 = a window of the n latest tokens, or a SinkWindow.
Budget = KV | int | SinkWindow


def budget_json(budget: Budget) -> str | int | dict[str, int]:
    """A budget as the profile file and the status route write it ("full", "none", n or
    {"sink": S, "window": W})."""
    if isinstance(budget, SinkWindow):
        return {"sink": budget.sink, "window": budget.window}
    return budget.value if isinstance(budget, KV) else budget


def sink_blocks(sink: int, block_size: int) -> int:
    """Blocks that `sink` sink tokens occupy per layer (they stay for the sequence's lifetime)."""
    return ceil(sink / block_size)


def span(budget: Budget) -> int | None:
    """Tokens a layer attends to at most (None: every token of the context)."""
    if isinstance(budget, SinkWindow):
        return budget.sink + budget.window
    return budget if isinstance(budget, int) else None


@dataclass(frozen=True)
class KVGroup:
    """One vLLM KV-cache group: layers sharing a block table (and a window)."""

    window: Budget  # KV.FULL, a window or a SinkWindow (never KV.NONE: such layers have no group)
    layers: tuple[int, ...]


@dataclass(frozen=True)
class KVPlan:
    """vLLM's KV-cache grouping of a layout."""

    groups: tuple[KVGroup, ...]
    group_size: int  # layers per group, padding included

    @property
    def padding_layers(self) -> int:
        """Unused layer slots vLLM adds so that every group has `group_size` layers."""
        return sum(self.group_size - len(g.layers) for g in self.groups)

    def pool_blocks(self, kv_bytes: int, page_bytes: int) -> int:
        """Blocks in the pool for `kv_bytes` of KV memory (`page_bytes`: one layer, one block)."""
        return kv_bytes // (self.group_size * page_bytes)

    def blocks_per_sequence(self, tokens: int, block_size: int, in_flight: int = 1) -> int:
        """Pool blocks a sequence holds while `in_flight` of its `tokens` are being computed."""
        return sum(held_blocks(g.window, tokens, block_size, in_flight) for g in self.groups)

    def max_sequences(self, kv_bytes: int, page_bytes: int, tokens: int, block_size: int) -> int:
        """Sequences decoding at `tokens` that fit in the pool at once, whatever their alignment
        to block boundaries (vLLM's per-request admission bound for windowed groups)."""
        worst = sum(max_held_blocks(g.window, tokens, block_size) for g in self.groups)
        return self.pool_blocks(kv_bytes, page_bytes) // worst


def max_held_blocks(window: Budget, tokens: int, block_size: int) -> int:
    """Most blocks one layer group holds for a sequence of `tokens` decoding one token at a time:
    a window may start inside a block, so it can span one block more than its length."""
    full = ceil(tokens / block_size)
    if window is KV.FULL:
        return full
    if isinstance(window, SinkWindow):
        return min(sink_blocks(window.sink, block_size) + ceil(window.window / block_size) + 1, full)
    return min(ceil(window / block_size) + 1, full)


def held_blocks(window: Budget, tokens: int, block_size: int, in_flight: int = 1) -> int:
    """Blocks one group holds for one sequence: vLLM frees a windowed layer's blocks that lie
    wholly before `computed - window + 1` (SlidingWindowManager.remove_skipped_blocks); a sink
    layer keeps its sink blocks and frees only those between them and the window."""
    total = ceil(tokens / block_size)
    if window is KV.FULL:
        return total
    if isinstance(window, SinkWindow):
        first_needed = max(0, tokens - in_flight - window.window + 1)
        return total - max(0, first_needed // block_size - sink_blocks(window.sink, block_size))
    first_needed = max(0, tokens - in_flight - window + 1)
    return total - first_needed // block_size


def plan(budgets: Sequence[Budget]) -> KVPlan:
    """vLLM 0.32.0's grouping (`_get_kv_cache_groups_uniform_page_size`) of these budgets."""
    buckets: dict[Budget, list[int]] = {}
    for layer, budget in enumerate(budgets):
        if budget is not KV.NONE:
            buckets.setdefault(budget, []).append(layer)
    if not buckets:
        raise ValueError("every layer has KV budget 'none'")
    if len(buckets) == 1:
        ((window, layers),) = buckets.items()
        return KVPlan((KVGroup(window, tuple(layers)),), len(layers))
    sizes = [len(v) for v in buckets.values()]
    group_size = max(sizes) if max(sizes) < 1.5 * min(sizes) else min(sizes)
    groups = []
    for window, layers in buckets.items():
        n = ceil(len(layers) / group_size)
        groups.extend(KVGroup(window, tuple(layers[i::n])) for i in range(n))
    return KVPlan(tuple(groups), group_size)


def kv_fraction(budgets: Sequence[Budget], tokens: int, block_size: int) -> float:
    """KV bytes a sequence of `tokens` holds in vLLM's pool (whole blocks, a window's partial
    first block included), relative to every layer full."""
    held = sum(0 if b is KV.NONE else max_held_blocks(b, tokens, block_size) for b in budgets)
    return held / (len(budgets) * ceil(tokens / block_size))
