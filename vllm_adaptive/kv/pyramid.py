"""Pyramid (PyramidKV): windows shrink linearly with depth, lower layers keep the most."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_adaptive.kv.layout import Budget
from vllm_adaptive.kv.signals import LayerSignals
from vllm_adaptive.kv.tiers import floor_tokens, split_tiers, to_budgets, water_fill


@dataclass
class PyramidKV:
    name: str = "pyramid"
    sink: int = 0  # attention-sink tokens every windowed layer keeps (StreamingLLM)

    def allocate(self, fraction: float, layers: list[int], num_layers: int, reference_tokens: int,
                 block_size: int, tier_size: int, signals: LayerSignals) -> list[Budget]:
        tiers = split_tiers(sorted(layers), tier_size)
        weights = [float(len(tiers) - t) for t in range(len(tiers))]
        windows = water_fill(weights, fraction * reference_tokens, reference_tokens, floor_tokens(block_size, self.sink))
        return to_budgets(windows, tiers, num_layers, reference_tokens, block_size, self.sink)
