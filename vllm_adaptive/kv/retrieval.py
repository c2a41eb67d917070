"""Retrieval-aware: the layers that retrieval depends on keep full KV, the rest share what is left.

Layers are ranked by their measured retrieval cost (`LayerSignals.retrieval`); the top
`full_tiers` tiers keep full KV as long as the budget leaves every other layer at least the
floor (fewer full tiers otherwise). The remaining layers share the rest as `SensitivityKV`
allocates it (tiers by perplexity cost, windows water-filled in proportion to it).
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm_adaptive.kv.layout import Budget
from vllm_adaptive.kv.sensitivity import SensitivityKV
from vllm_adaptive.kv.signals import LayerSignals
from vllm_adaptive.kv.tiers import floor_tokens


@dataclass
class RetrievalKV:
    name: str = "retrieval"
    sink: int = 0  # attention-sink tokens every windowed layer keeps (StreamingLLM)
    full_tiers: int = 1

    def allocate(self, fraction: float, layers: list[int], num_layers: int, reference_tokens: int,
                 block_size: int, tier_size: int, signals: LayerSignals) -> list[Budget]:
        if signals.retrieval is None:
            raise ValueError("the retrieval allocation needs the per-layer retrieval signal "
                             "(measured by `vllm-adaptive calibrate`)")
        ranked = sorted(layers, key=lambda i: -signals.retrieval[i])
        floor = floor_tokens(block_size, self.sink)
        total = fraction * reference_tokens * len(layers)
        keep = min(self.full_tiers, len(layers) // tier_size - 1) * tier_size  # layers kept full
        while keep and total - keep * reference_tokens < floor * (len(layers) - keep):
            keep -= tier_size  # the others could not keep even the floor
        rest = ranked[keep:]  # the layers not named stay full
        mean = min((total - keep * reference_tokens) / len(rest), reference_tokens)
        return SensitivityKV(sink=self.sink).allocate(mean / reference_tokens, rest, num_layers, reference_tokens,
                                                      block_size, tier_size, signals)
