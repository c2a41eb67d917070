"""Layer-wise KV budgets: allocation strategies (one per file) and vLLM's grouping of them.

Each strategy is a small dataclass with one method, ``allocate(fraction, layers, num_layers,
reference_tokens, block_size, tier_size, signals)``, returning one budget per layer
(KV.FULL, a window of n tokens, or a SinkWindow when the strategy keeps `sink` tokens) such that a sequence of `reference_tokens` holds about
`fraction` of its full-KV bytes in vLLM's pool over `layers` (the layers that run; skipped ones
have none), counting whole blocks (see `kv_fraction`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from vllm_adaptive.kv.layout import KV, Budget, KVGroup, KVPlan, SinkWindow, budget_json, kv_fraction, plan, span
from vllm_adaptive.kv.pyramid import PyramidKV
from vllm_adaptive.kv.retrieval import RetrievalKV
from vllm_adaptive.kv.sensitivity import SensitivityKV
from vllm_adaptive.kv.signals import LayerSignals
from vllm_adaptive.kv.uniform import UniformKV


class KVStrategy(Protocol):
    name: str

    def allocate(self, fraction: float, layers: list[int], num_layers: int, reference_tokens: int,
                 block_size: int, tier_size: int, signals: LayerSignals) -> list[Budget]: ...


__all__ = ["KV", "STRATEGIES", "Budget", "KVGroup", "KVPlan", "LayerSignals", "PyramidKV", "RetrievalKV",
           "SensitivityKV", "SinkWindow", "UniformKV",
           "budget_json", "kv_fraction", "plan", "span"]

STRATEGIES: dict[str, Callable[[], KVStrategy]] = {
    UniformKV.name: UniformKV,
    PyramidKV.name: PyramidKV,
    SensitivityKV.name: SensitivityKV,
    RetrievalKV.name: RetrievalKV,
}
