"""The step plan: per-layer actions resolved once per step, per model instance."""

from __future__ import annotations

import numpy as np
import torch

from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet
from vllm_adaptive.runtime import StepPlan

SPEC = ModelSpec("LlamaForCausalLM", 6, 64)


def table(default: str = "full") -> ProfileSet:
    return ProfileSet.of(SPEC, [Profile("a", frozenset({1, 2})), Profile("b", frozenset({2, 4}))], default)


def test_uniform_step_skips_the_profile_layers():
    plan = StepPlan(table())
    plan.plan_batch([{"adaptive_profile": "a"}, {"adaptive_profile": "a"}], np.array([3, 1]))
    assert [plan.action(i, 4, torch.device("cpu")) for i in range(6)] == [False, True, True, False, False, False]
    plan.plan_batch([None], np.array([1]))  # no profile named: the default
    assert not any(plan.action(i, 1, torch.device("cpu")) for i in range(6))


def test_mixed_step_masks_per_token_and_pads_with_run():
    plan = StepPlan(table())
    plan.plan_batch([{"adaptive_profile": "a"}, {"adaptive_profile": "b"}, None], np.array([2, 1, 1]))
    cpu = torch.device("cpu")
    assert plan.action(0, 6, cpu) is False  # nobody skips layer 0
    assert plan.action(2, 6, cpu).tolist() == [True, True, True, False, False, False]  # a and b skip it
    assert plan.action(1, 6, cpu).tolist() == [True, True, False, False, False, False]  # padding runs
    assert plan.action(4, 4, cpu).tolist() == [False, False, True, False]
    assert plan.action(1, 6, cpu) is plan.action(1, 6, cpu)  # one mask per pattern and step


def test_unknown_profile_serves_the_default_and_stale_plans_do_not_leak():
    plan = StepPlan(table(default="a"))
    plan.plan_batch([{"adaptive_profile": "nope"}], np.array([5]))
    assert plan.action(1, 5, torch.device("cpu")) is True  # default 'a' skips layer 1
    plan.plan_batch([{"adaptive_profile": "b"}], np.array([5]))
    assert plan.action(1, 2, torch.device("cpu")) is True  # a smaller (dummy) run: default, not 'b'
    assert plan.action(1, 5, torch.device("cpu")) is False


def test_two_models_keep_their_own_plans():
    first, second = StepPlan(table()), StepPlan(table())
    first.plan_batch([{"adaptive_profile": "a"}], np.array([1]))
    second.plan_batch([{"adaptive_profile": "b"}], np.array([1]))
    assert first.action(1, 1, torch.device("cpu")) is True and second.action(1, 1, torch.device("cpu")) is False


def test_step_profile_names_the_view_to_run():
    plan = StepPlan(table(default="a"))
    assert plan.step_profile(8) == "a"  # before any step: the default
    plan.plan_batch([{"adaptive_profile": "b"}, {"adaptive_profile": "b"}], np.array([3, 1]))
    assert plan.step_profile(4) == "b" and plan.step_profile(6) == "b"  # padded runs follow the step
    assert plan.step_profile(2) == "a"  # a smaller (dummy) run: the default
    plan.plan_batch([{"adaptive_profile": "b"}, None], np.array([3, 1]))
    assert plan.step_profile(4) is None  # mixed: no single view


def test_warming_runs_every_size_as_the_profile_then_the_default():
    plan = StepPlan(table())
    with plan.warming("b"):
        assert plan.step_profile(1) == "b" and plan.action(4, 1, torch.device("cpu")) is True
    assert plan.step_profile(1) == "full" and plan.action(4, 1, torch.device("cpu")) is False


def test_a_request_is_served_by_its_profile_or_else_the_default():
    """The rule StepPlan and the grouping scheduler share (vllm_adaptive.core.sched groups by it)."""
    from vllm_adaptive.runtime import served_as

    served = {"full", "fast"}
    assert served_as(None, "full", served) == served_as("full", "full", served) == "full"
    assert served_as("unknown", "full", served) == "full"  # served as the default, so grouped with it
    assert served_as("fast", "full", served) == "fast"
