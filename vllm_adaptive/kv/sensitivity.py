"""Sensitivity (EpiCache / PrefixKV style): the budget goes to the layers that need it most.

`sensitivity[i]` is layer i's measured cost when its KV alone is cut to a short window on
calibration text (`vllm-adaptive calibrate`: increase of the mean next-token NLL). Layers are
ranked by it, cut into tiers, and each tier's window is proportional to its mean cost
(water-filled: never above full context, never below a one-block window).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_adaptive.kv.layout import Budget
from vllm_adaptive.kv.signals import LayerSignals
from vllm_adaptive.kv.tiers import floor_tokens, split_tiers, to_budgets, water_fill


@dataclass
class SensitivityKV:
    name: str = "sensitivity"
    sink: int = 0  # attention-sink tokens every windowed layer keeps (StreamingLLM)

    def allocate(self, fraction: float, layers: list[int], num_layers: int, reference_tokens: int,
                 block_size: int, tier_size: int, signals: LayerSignals) -> list[Budget]:
        ranked = sorted(layers, key=lambda i: -signals.perplexity[i])
        tiers = split_tiers(ranked, tier_size)
        weights = [max(sum(signals.perplexity[i] for i in tier) / len(tier), 0.0) for tier in tiers]
        windows = water_fill(weights, fraction * reference_tokens, reference_tokens, floor_tokens(block_size, self.sink))
        return to_budgets(windows, tiers, num_layers, reference_tokens, block_size, self.sink)
