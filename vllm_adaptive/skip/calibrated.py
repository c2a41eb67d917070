"""Training-free calibrated skip set: greedy search guided by a measured layer-importance metric."""

from __future__ import annotations

from dataclasses import dataclass

from vllm_adaptive.skip.layers import middle_layers


@dataclass
class CalibratedSkip:
    """Greedy: add, one at a time, the layer whose joint removal hurts calibration perplexity least.

    Candidates each step are the `pool` least important remaining layers by `metric`
    (default: ΔPPL when the layer alone is removed), so the search costs about k x pool
    evaluations instead of k x L. The sets are nested: the k-set extends the (k-1)-set.
    """

    name: str = "calibrated"
    metric: str = "delta_ppl"
    pool: int = 8

    def select(self, k: int, num_layers: int, metrics, evaluate) -> list[int]:
        score = metrics[self.metric]
        chosen: list[int] = []
        for _ in range(k):
            rest = sorted((i for i in middle_layers(num_layers) if i not in chosen), key=lambda i: score[i])
            candidates = rest[: self.pool]
            best = min(candidates, key=lambda i: evaluate(frozenset(chosen + [i])))
            chosen.append(best)
        return sorted(chosen)
