"""max_quality_loss against a real profile file: `check` (and --profiles), start-up and reload
refuse a category whose profile exceeds its bound or was not measured on it, naming the
category, the profile and the measured figure."""

from __future__ import annotations

import httpx
import pytest

from controller.cli import main
from controller.snapshot import build_snapshot
from policies.schema import PolicyError
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

POLICY = """\
version: 1
default_category: chat
compute_profiles: profiles.json
categories:
  - name: code
    keywords: [python]
    policy:
      similarity_threshold: 0.95
      ttl_seconds: 60
      max_entries: 10
      compute_profile: LIGHT
      max_quality_loss: {delta_ppl_pct: 10}
  - name: chat
    policy: {similarity_threshold: 0.9, ttl_seconds: 60, max_entries: 10}
"""


@pytest.fixture
def policy(tmp_path):
    """A policy next to a profile file whose `light` costs code +6 % and `heavy` +48 %."""
    def figures(dppl):
        return {"delta_ppl_pct": dppl, "top1_agreement": 0.8, "answer_exact_match": 0.5, "answer_similarity": 0.7}
    ProfileSet.of(ModelSpec("LlamaForCausalLM", 30, 576), [
        Profile("light", frozenset({5}), categories={"code": figures(6.0)}),
        Profile("heavy", frozenset({5, 14}), categories={"code": figures(48.25), "chat": figures(20.0)}),
        Profile("prose-only", frozenset({7}), categories={"prose": figures(1.0)}),
    ]).dump(tmp_path / "profiles.json")
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.replace("LIGHT", "light"))
    return path


def test_check_accepts_a_profile_within_the_bound_and_refuses_one_beyond(policy, capsys):
    assert main(["check", str(policy)]) == 0
    assert "max_quality_loss of code: met" in capsys.readouterr().out
    policy.write_text(POLICY.replace("LIGHT", "heavy"))
    assert main(["check", str(policy)]) == 1
    err = capsys.readouterr().err
    assert f"{policy}:11: categories[0=code].policy.compute_profile: category 'code': compute_profile 'heavy'" in err
    assert "answer perplexity increase (%) is 48.2, above max_quality_loss.delta_ppl_pct 10" in err


def test_check_names_unmeasured_categories_and_takes_another_profile_file(policy, tmp_path, capsys):
    policy.write_text(POLICY.replace("LIGHT", "prose-only"))
    assert main(["check", str(policy)]) == 1
    assert "compute_profile 'prose-only' was not measured on category 'code'" in capsys.readouterr().err
    other = tmp_path / "other.json"
    ProfileSet.of(ModelSpec("LlamaForCausalLM", 30, 576), [
        Profile("prose-only", frozenset({7}), categories={"code": {"delta_ppl_pct": 2.0}})]).dump(other)
    assert main(["check", str(policy), "--profiles", str(other)]) == 0
    assert main(["check", str(policy), "--profiles", str(tmp_path / "missing.json")]) == 1
    assert f"{policy}:3: compute_profiles:" in capsys.readouterr().err


def test_start_up_refuses(policy, encoder):
    policy.write_text(POLICY.replace("LIGHT", "heavy"))
    with pytest.raises(PolicyError, match="category 'code': compute_profile 'heavy' exceeds its bound"):
        build_snapshot(policy, encoder)


async def test_reload_refuses_and_keeps_the_policy_in_force(sim_backend, start_controller, policy, redis_client):
    ctl = start_controller([sim_backend], config_path=policy)
    admin = {"X-Admin-Token": ctl.admin_token}
    policy.write_text(POLICY.replace("LIGHT", "heavy").replace("categories:\n", "load_policy: {}\ncategories:\n"))
    refused = httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30)
    assert refused.status_code == 422
    assert "compute_profile 'heavy' exceeds its bound: answer perplexity increase (%) is 48.2" in refused.text
    body = {"model": "sim", "temperature": 0, "messages": [{"role": "user", "content": "python: reverse a list"}]}
    served = httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30)
    assert served.status_code == 200 and served.headers["x-adaptive-profile"] == "light"


def test_suggest_profiles_lists_the_fastest_within_each_bound(policy, capsys):
    assert main(["suggest-profiles", str(policy), "--delta-ppl-pct", "25"]) == 0
    out = capsys.readouterr().out
    code = out[out.index("code ("):out.index("chat (")]
    assert code.index("light") < code.index("full") and "heavy" not in code
    assert "light" in code.splitlines()[1] and "proposed compute_profile" in code.splitlines()[1]
    chat = out[out.index("chat ("):]
    assert "from the command line" in chat and "proposed compute_profile" in chat.splitlines()[1]
    assert "heavy" in chat.splitlines()[1]  # chat's +20 % is within the command line's 25 %


def test_a_bounded_category_that_runs_full_needs_no_profile_file(tmp_path, capsys):
    path = tmp_path / "policies.yaml"
    path.write_text(POLICY.replace("LIGHT", "full").replace("profiles.json", "missing.json"))
    assert main(["check", str(path)]) == 0  # full is the reference: nothing to look up
    path.write_text(POLICY.replace("LIGHT", "light").replace("profiles.json", "missing.json"))
    assert main(["check", str(path)]) == 1
    assert f"{path}:3: compute_profiles:" in capsys.readouterr().err
