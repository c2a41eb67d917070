"""Uniform: every layer keeps the same window (the baseline of the allocation strategies)."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_adaptive.kv.layout import Budget
from vllm_adaptive.kv.signals import LayerSignals
from vllm_adaptive.kv.tiers import to_budgets


@dataclass
class UniformKV:
    name: str = "uniform"
    sink: int = 0  # attention-sink tokens every windowed layer keeps (StreamingLLM)

    def allocate(self, fraction: float, layers: list[int], num_layers: int, reference_tokens: int,
                 block_size: int, tier_size: int, signals: LayerSignals) -> list[Budget]:
        return to_budgets([fraction * reference_tokens], [layers], num_layers, reference_tokens, block_size, self.sink)
