"""Load-based policy: property tests of the pure functions."""

from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

from policies.load import BackendLoad, decide, fleet_pressure, load_score, next_level, pressure
from policies.schema import CategoryPolicy, LoadPolicy, LoadResponse

LP = LoadPolicy()
LEVELS = len(LP.level_thresholds)
POLICY = CategoryPolicy(similarity_threshold=0.95, ttl_seconds=100, max_entries=10, compute_profile="full",
                        load=LoadResponse(threshold_floor=0.9, ttl_max_seconds=400, profile_ladder=["fast", "fastest"]))

thresholds = st.floats(0.0, 1.0)


@given(base=thresholds, gap=thresholds, level=st.integers(0, LEVELS))
def test_threshold_never_crosses_floor_and_relaxes_monotonically(base, gap, level):
    floor = base * gap
    policy = CategoryPolicy(similarity_threshold=base, ttl_seconds=10, max_entries=1,
                            load=LoadResponse(threshold_floor=floor))
    values = [decide(policy, lv, LEVELS).threshold for lv in range(LEVELS + 1)]
    assert all(floor - 1e-12 <= v <= base + 1e-12 for v in values)
    assert values == sorted(values, reverse=True)
    assert values[0] == base and math.isclose(values[-1], floor, abs_tol=1e-12)


def test_precision_first_category_without_floor_never_relaxes():
    policy = CategoryPolicy(similarity_threshold=0.97, ttl_seconds=10, max_entries=1)
    assert {decide(policy, lv, LEVELS).threshold for lv in range(LEVELS + 1)} == {0.97}


def test_ttl_and_profile_ladder():
    assert [decide(POLICY, lv, LEVELS).ttl_seconds for lv in range(4)] == [100, 200, 300, 400]
    assert [decide(POLICY, lv, LEVELS).compute_profile for lv in range(4)] == ["full", "fast", "fastest", "fastest"]


@given(ps=st.lists(st.floats(0.0, 1.0), min_size=1, max_size=50))
def test_levels_follow_pressure_with_hysteresis(ps):
    level = 0
    for p in ps:
        new = next_level(level, p, LP)
        target = sum(p >= t for t in LP.level_thresholds)
        assert new >= target  # never below what the pressure asks for
        if new > level:
            assert new == target  # rises straight to the target
        if new < level:  # fell: pressure must be clearly below the threshold it left
            assert p < LP.level_thresholds[new] - LP.hysteresis + 1e-12 or new == target
        level = new


def test_no_flapping_around_a_threshold():
    level = next_level(0, 0.5, LP)
    assert level == 1
    for p in (0.49, 0.51, 0.45, 0.5, 0.41):  # jitter inside the hysteresis band
        level = next_level(level, p, LP)
        assert level == 1
    assert next_level(level, 0.39, LP) == 0
    assert next_level(3, 0.0, LP) == 0  # load gone: straight back to normal


def test_scores_dead_stale_and_in_flight():
    assert math.isinf(load_score(BackendLoad(up=False), LP))
    assert math.isinf(load_score(BackendLoad(age_seconds=LP.stale_after_seconds + 1), LP))
    idle = load_score(BackendLoad(), LP)
    assert idle == 0
    assert load_score(BackendLoad(in_flight=4), LP) == 4 * LP.weight_waiting  # fills the scrape gap
    assert load_score(BackendLoad(waiting=2, kv_usage=0.5), LP) == 2 + 0.5 * LP.weight_kv_usage
    assert pressure(math.inf, LP) == 1.0 and pressure(LP.saturation_score * 3, LP) == 1.0


def test_fleet_pressure_is_that_of_the_least_loaded_backend():
    busy, idle = BackendLoad(waiting=100), BackendLoad(waiting=1)
    assert fleet_pressure([busy, idle], LP) == pressure(load_score(idle, LP), LP)
    assert fleet_pressure([BackendLoad(up=False)], LP) == 1.0


@given(current=st.integers(0, 10), p=st.floats(0.0, 1.0), n=st.integers(1, 4))
def test_a_level_from_a_policy_with_more_levels_is_clamped(current, p, n):
    """After a reload that shrinks `level_thresholds`, the old level must not crash the monitor."""
    policy = LoadPolicy(level_thresholds=[(i + 1) / n for i in range(n)])
    assert 0 <= next_level(current, p, policy) <= n
