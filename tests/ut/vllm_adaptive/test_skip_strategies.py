"""Every skip strategy through the same checks (kvpress-style matrix)."""

from __future__ import annotations

import pytest

from vllm_adaptive.skip import STRATEGIES

L = 30
METRICS = {"delta_ppl": [50.0 - abs(15.2 - i) for i in range(L)]}  # low layers matter least here


def evaluate(skip: frozenset[int]) -> float:
    return sum(METRICS["delta_ppl"][i] for i in skip)


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("k", [0, 2, 4, 8])
def test_strategy_contract(name, k):
    chosen = STRATEGIES[name]().select(k, L, METRICS, evaluate)
    assert len(chosen) == len(set(chosen)) == k
    assert all(1 <= i <= L - 2 for i in chosen)  # first and last layers are kept
    assert chosen == sorted(chosen)
    assert STRATEGIES[name]().select(k, L, METRICS, evaluate) == chosen  # deterministic


def test_balanced_spreads_evenly():
    assert STRATEGIES["balanced"]().select(2, L, METRICS, evaluate) == [10, 19]


def test_calibrated_follows_the_measured_cost():
    assert STRATEGIES["calibrated"]().select(2, L, METRICS, evaluate) == [1, 2]
