"""Every KV allocation strategy through the same checks (kvpress-style matrix), plus vLLM's grouping."""

from __future__ import annotations

import pytest

from vllm_adaptive.kv import KV, STRATEGIES, kv_fraction, plan
from vllm_adaptive.kv.tiers import split_tiers, water_fill

L, REF, BLOCK, TIER = 30, 2048, 128, 5
SENSITIVITY = [abs(15 - i) ** 1.5 + 1 for i in range(L)]  # the outer layers need the most here


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_strategy_contract(name, fraction):
    budgets = STRATEGIES[name]().allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    assert len(budgets) == L
    windows = [b for b in budgets if b is not KV.FULL]
    assert all(BLOCK <= w < REF and w % BLOCK == 0 for w in windows)  # whole blocks, below full context
    assert kv_fraction(budgets, REF, BLOCK) == pytest.approx(fraction, abs=BLOCK / REF / 2)  # whole blocks only
    kv = plan(budgets)
    assert kv.padding_layers == 0  # tiers of equal size: vLLM adds no padding layers
    assert sorted(i for g in kv.groups for i in g.layers) == list(range(L))
    assert STRATEGIES[name]().allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY) == budgets


def test_pyramid_shrinks_with_depth_and_sensitivity_follows_the_measurement():
    pyramid = STRATEGIES["pyramid"]().allocate(0.5, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    size = [REF if b is KV.FULL else b for b in pyramid]
    assert all(a >= b for a, b in zip(size, size[1:])) and size[0] > size[-1]
    sens = STRATEGIES["sensitivity"]().allocate(0.5, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    size = [REF if b is KV.FULL else b for b in sens]
    assert size[0] > size[15] and size[29] > size[15]  # most sensitive layers keep the most


def test_skipped_layers_are_left_out_of_the_allocation():
    running = [i for i in range(L) if i not in (5, 14)]
    budgets = STRATEGIES["pyramid"]().allocate(0.5, running, L, REF, BLOCK, 7, SENSITIVITY)
    budgets = [KV.NONE if i in (5, 14) else b for i, b in enumerate(budgets)]
    assert plan(budgets).padding_layers == 0 and len(plan(budgets).groups) == 4


def test_water_fill_respects_cap_floor_and_mean():
    out = water_fill([10, 1, 1, 0], mean=500, cap=1000, floor=100)
    assert out[0] == pytest.approx(1000) and out[3] == pytest.approx(100)
    assert sum(out) / 4 == pytest.approx(500)
    with pytest.raises(ValueError):
        water_fill([1, 1], mean=2000, cap=1000, floor=100)


def test_tiers_must_divide_the_layers():
    with pytest.raises(ValueError, match="does not divide 28 layers"):
        split_tiers(list(range(28)), 5)


def test_plan_follows_vllm_grouping_rules():
    full = plan([KV.FULL] * L)
    assert len(full.groups) == 1 and full.group_size == 30
    assert full.pool_blocks(64 << 20, 98304) == 22
    # 27 full + 1 window: vLLM groups one layer per group (27 + 1 groups)
    odd = plan([KV.NONE, KV.NONE] + [KV.FULL] * 27 + [1024])
    assert odd.group_size == 1 and len(odd.groups) == 28
    # 20 full + 10 windowed: groups of 10 layers, the full layers split in two groups
    mixed = plan([KV.FULL] * 20 + [256] * 10)
    assert mixed.group_size == 10 and [g.window for g in mixed.groups] == [KV.FULL, KV.FULL, 256]
    # a window frees whole blocks behind it: 1003 tokens, window 256, block 128 -> blocks 5..7
    assert mixed.blocks_per_sequence(1003, 128) == 8 + 8 + 3
