"""max_quality_loss: the YAML bound, and the pure decision from (policy, per-category figures) to
refusals that name the category, the profile and the measured figure."""

from __future__ import annotations

import pytest

from policies.quality import quality_problems, suggest
from policies.schema import PolicyError, QualityBound, parse_policies

POLICY = """\
version: 1
default_category: chat
categories:
  - name: code
    keywords: [python]
    policy:
      similarity_threshold: 0.95
      ttl_seconds: 60
      max_entries: 10
      compute_profile: fast
      max_quality_loss: {delta_ppl_pct: 10, min_answer_agreement: 0.5}
      load: {profile_ladder: [fastest]}
  - name: chat
    policy: {similarity_threshold: 0.9, ttl_seconds: 60, max_entries: 10, compute_profile: fastest}
"""

#: profile -> category -> figures, as `calibrate --category-data` writes them
MEASURED = {
    "full": {"code": {"delta_ppl_pct": 0.0, "answer_exact_match": 1.0}},
    "fast": {"code": {"delta_ppl_pct": 6.0, "top1_agreement": 0.9, "answer_exact_match": 0.75}},
    "fastest": {"code": {"delta_ppl_pct": 48.2, "top1_agreement": 0.7, "answer_exact_match": 0.125}},
}


def test_bound_is_optional_and_validated_with_file_line_field():
    config = parse_policies(POLICY, "p.yaml")
    assert config.category("code").policy.max_quality_loss == QualityBound(delta_ppl_pct=10, min_answer_agreement=0.5)
    assert config.category("chat").policy.max_quality_loss is None
    for bad, message in [("{}", "needs at least one of delta_ppl_pct"), ("{delta_ppl_pct: -1}", "greater than or equal"),
                         ("{min_answer_agreement: 2}", "less than or equal"), ("{ppl: 3}", "Extra inputs")]:
        with pytest.raises(PolicyError) as err:
            parse_policies(POLICY.replace("{delta_ppl_pct: 10, min_answer_agreement: 0.5}", bad), "p.yaml")
        assert "p.yaml:11: categories[0=code].policy.max_quality_loss" in str(err.value) and message in str(err.value)


def test_a_ladder_step_beyond_the_bound_is_refused_naming_category_profile_and_figure():
    problems = quality_problems(parse_policies(POLICY, "p.yaml"), MEASURED, "profiles.json")
    assert [(p.category, p.profile, p.loc) for p in problems] == [
        ("code", "fastest", ("categories", 0, "policy", "load", "profile_ladder", 0))]
    message = str(problems[0])
    assert "category 'code': load.profile_ladder.0 'fastest'" in message
    assert "answer perplexity increase (%) is 48.2, above max_quality_loss.delta_ppl_pct 10" in message
    assert "greedy answers identical to full's is 0.125, below max_quality_loss.min_answer_agreement 0.5" in message
    # chat states no bound: its profile is not checked
    assert not any(p.category == "chat" for p in problems)


def test_unmeasured_profiles_and_categories_are_refused():
    config = parse_policies(POLICY, "p.yaml")
    no_code = {n: {} for n in MEASURED}
    [first, second] = quality_problems(config, no_code, "profiles.json")
    assert "compute_profile 'fast' was not measured on category 'code' in profiles.json" in str(first)
    assert second.profile == "fastest"
    [missing, _] = quality_problems(config, {"full": {}}, "profiles.json")
    assert "'fast' is not a profile of profiles.json" in str(missing)
    [nofile, _] = quality_problems(config, None)
    assert "names no compute_profiles file" in str(nofile)


def test_full_meets_any_bound_and_a_met_bound_gives_no_problem():
    config = parse_policies(POLICY.replace("[fastest]", "[full]"), "p.yaml")
    assert quality_problems(config, MEASURED) == []
    only_full = parse_policies(POLICY.replace("      compute_profile: fast\n", "").replace("[fastest]", "[]"), "p.yaml")
    assert quality_problems(only_full, None) == []  # nothing but full: no profile file needed


def test_suggest_orders_profiles_within_the_bound_fastest_first():
    config = parse_policies(POLICY, "p.yaml")
    cost = {"full": 1.0, "fast": 28 / 30, "fastest": 24 / 30}
    assert suggest(config, MEASURED, cost) == {"code": ["fast", "full"]}
    loose = QualityBound(delta_ppl_pct=50)
    assert suggest(config, MEASURED, cost, loose) == {"code": ["fast", "full"], "chat": ["full"]}
    assert suggest(parse_policies(POLICY.replace("delta_ppl_pct: 10, ", "delta_ppl_pct: 60, ").replace(
        "min_answer_agreement: 0.5", "min_answer_agreement: 0.1"), "p.yaml"), MEASURED, cost)["code"] == [
        "fastest", "fast", "full"]
