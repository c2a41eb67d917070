"""Every KV allocation strategy through the same checks (kvpress-style matrix), plus vLLM's grouping."""

from __future__ import annotations

import pytest

from vllm_adaptive.kv import KV, STRATEGIES, LayerSignals, SinkWindow, kv_fraction, plan
from vllm_adaptive.kv.layout import held_blocks, max_held_blocks
from vllm_adaptive.kv.tiers import split_tiers, water_fill

L, REF, BLOCK, TIER = 30, 2048, 128, 5
# perplexity: the outer layers need the most here; retrieval: layers 12-16 fetch from far back
SENSITIVITY = LayerSignals([abs(15 - i) ** 1.5 + 1 for i in range(L)], [10.0 if 12 <= i <= 16 else i / 100 for i in range(L)])


@pytest.mark.parametrize("name", sorted(STRATEGIES))
@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
@pytest.mark.parametrize("sink", [0, 4])
def test_strategy_contract(name, fraction, sink):
    strategy = STRATEGIES[name](sink=sink)
    budgets = strategy.allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    assert len(budgets) == L
    windows = [b for b in budgets if b is not KV.FULL]
    if sink:  # every windowed layer keeps the sinks
        assert all(isinstance(b, SinkWindow) and b.sink == sink for b in windows)
        windows = [b.window for b in windows]
    assert all(BLOCK <= w < REF and w % BLOCK == 0 for w in windows)  # whole blocks, below full context
    assert kv_fraction(budgets, REF, BLOCK) == pytest.approx(fraction, abs=BLOCK / REF / 2)  # whole blocks only
    kv = plan(budgets)
    assert kv.padding_layers == 0  # tiers of equal size: vLLM adds no padding layers
    assert sorted(i for g in kv.groups for i in g.layers) == list(range(L))
    assert STRATEGIES[name](sink=sink).allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY) == budgets


def test_pyramid_shrinks_with_depth_and_sensitivity_follows_the_measurement():
    pyramid = STRATEGIES["pyramid"]().allocate(0.5, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    size = [REF if b is KV.FULL else b for b in pyramid]
    assert all(a >= b for a, b in zip(size, size[1:])) and size[0] > size[-1]
    sens = STRATEGIES["sensitivity"]().allocate(0.5, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    size = [REF if b is KV.FULL else b for b in sens]
    assert size[0] > size[15] and size[29] > size[15]  # most sensitive layers keep the most


@pytest.mark.parametrize("fraction", [0.5, 0.75])
def test_retrieval_layers_keep_full_kv_while_the_budget_allows(fraction):
    budgets = STRATEGIES["retrieval"](sink=4).allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    full = {i for i, b in enumerate(budgets) if b is KV.FULL}
    assert {12, 13, 14, 15, 16} <= full  # the top retrieval tier
    with pytest.raises(ValueError, match="retrieval signal"):
        STRATEGIES["retrieval"]().allocate(fraction, list(range(L)), L, REF, BLOCK, TIER, LayerSignals([1.0] * L))
    # at 25 %, a full tier (5 x 16 blocks) leaves 40 blocks for 25 layers whose floor is 3 blocks
    # (2 for a one-block window + 1 sink block): no full tier
    tight = STRATEGIES["retrieval"](sink=4).allocate(0.25, list(range(L)), L, REF, BLOCK, TIER, SENSITIVITY)
    assert KV.FULL not in tight


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


@pytest.mark.parametrize("budget", [SinkWindow(4, 256), SinkWindow(130, 128), SinkWindow(1, 1)])
def test_sink_blocks_stay_and_the_gap_is_freed(budget):
    """A sink layer holds its sink blocks plus what a plain window holds, never more than the
    sequence's blocks, and at most `max_held_blocks` whatever the length."""
    sink_blocks = -(-budget.sink // BLOCK)
    for tokens in range(1, 3000, 37):
        held = held_blocks(budget, tokens, BLOCK)
        total = -(-tokens // BLOCK)
        window_held = held_blocks(budget.window, tokens, BLOCK)
        assert held == min(total, sink_blocks + window_held) or held == total
        assert held <= max_held_blocks(budget, tokens, BLOCK) <= total
    # 1003 tokens, 4 sinks + window 256, block 128: block 0 (sinks) and blocks 5..7 stay
    assert held_blocks(SinkWindow(4, 256), 1003, 128) == 1 + 3
