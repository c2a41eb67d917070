"""Profile pools: each backend serves some compute profiles (a compiled vLLM engine with the plugin
serves one), and a request goes to a backend that runs the profile it asks for, `full` instead
when none of those is up, never a more degraded one. Over real HTTP with simulated backends
(bench.sim_backend speaking the plugin's status route: a stand-in for a GPU fleet)."""

from __future__ import annotations

import httpx
import pytest

from controller.backends import BackendPool, parse_backend
from policies.schema import LoadPolicy
from tests.conftest import ServedApp


def test_backend_specs_declare_profiles_default_first():
    assert parse_backend("http://h:1/").serves is None
    b = parse_backend("http://h:1#calibrated-2,full")
    assert (b.url, b.serves, b.default_profile, b.declared) == ("http://h:1", {"calibrated-2", "full"}, "calibrated-2", True)
    with pytest.raises(ValueError, match="not profile names"):
        parse_backend("http://h:1#ok,no way")
    with pytest.raises(ValueError, match="must start with http"):
        parse_backend("h:1#full")


def test_route_prefers_the_profile_then_full_never_another_degraded_one():
    pool = BackendPool(["http://fast#fast", "http://full#full", "http://eager#full,fast,fastest", "http://stock"])
    policy = LoadPolicy()
    runs = {b.url: p for b, p in pool.route(policy, "fast")}
    assert runs == {"http://fast": "fast", "http://full": "full", "http://eager": "fast", "http://stock": "fast"}
    assert [p for _, p in pool.route(policy, "fast")][-1] == "full"  # full only after every server of "fast"
    assert "http://fast" not in {b.url for b, _ in pool.route(policy, "full")}  # would run "fast" for it
    assert {b.url: p for b, p in pool.route(policy, "fastest")} == {
        "http://full": "full", "http://eager": "fastest", "http://stock": "fastest"}
    pool.failed(pool.backends[2])  # a dead server of the profile comes after a live one running full
    assert [b.url for b, _ in pool.route(policy, "fastest")][-1] == "http://eager"


def chat(url, content, profile=None):
    extra = {"vllm_xargs": {"adaptive_profile": profile}} if profile else {}
    return httpx.post(url + "/v1/chat/completions", timeout=30, headers={"X-Adaptive-Category": "factual"},
                      json={"model": "sim", "temperature": 0, "messages": [{"role": "user", "content": content}], **extra})


def ran(backend: ServedApp) -> dict[str, int]:
    return httpx.get(backend.url + "/stats").json()["profiles"]


async def test_requests_go_to_a_backend_that_runs_their_profile(start_controller, redis_client):
    from bench.sim_backend import build

    compiled = ServedApp(build(slots=4, service_seconds=0.0, serves=["calibrated-2"]))  # found by its status route
    full = ServedApp(build(slots=4, service_seconds=0.0, serves=["full"]))
    try:
        ctl = start_controller([compiled.url, full.url + "#full"])
        ctl.wait_first_scrape()
        status = httpx.get(ctl.url + "/admin/effective", headers={"x-admin-token": ctl.admin_token}).json()
        assert [b["serves"] for b in status["backends"]] == [["calibrated-2"], ["full"]]

        lean = chat(ctl.url, "Who wrote the Odyssey?", "calibrated-2")
        assert lean.headers["x-backend"] == compiled.url and lean.headers["x-adaptive-profile"] == "calibrated-2"
        plain = chat(ctl.url, "How do bees make honey?")  # the policy's profile: full
        assert plain.headers["x-backend"] == full.url and plain.headers["x-adaptive-profile"] == "full"
        assert ran(compiled) == {"calibrated-2": 1} and ran(full) == {"full": 1}

        compiled.stop()  # its profile's only server is gone: full instead, and said so
        instead = chat(ctl.url, "Why is the sky blue?", "calibrated-2")
        assert instead.status_code == 200 and instead.headers["x-backend"] == full.url
        assert instead.headers["x-adaptive-profile"] == "full" and ran(full) == {"full": 2}
        stored = [await redis_client.hget(k, "profile") async for k in redis_client.scan_iter("va:doc:*")]
        assert sorted(stored) == [b"calibrated-2", b"full", b"full"]  # the cache records what ran
    finally:
        compiled.stop()
        full.stop()


def test_no_backend_runs_the_profile_is_a_503_that_says_so(start_controller):
    from bench.sim_backend import build

    lean = ServedApp(build(slots=4, service_seconds=0.0))
    try:
        ctl = start_controller([lean.url + "#calibrated-2"])
        refused = chat(ctl.url, "How deep is the Mariana Trench?")  # asks full: the server would run calibrated-2
        assert refused.status_code == 503
        assert "no backend serves compute profile 'full'" in refused.json()["error"]["message"]
        assert ran(lean) == {}
    finally:
        lean.stop()


def test_a_bad_backend_is_refused_by_the_command_line_with_the_reason(policies_path, capsys):
    from controller.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["serve", "--config", str(policies_path), "--backend", "http://vllm:8100#fast,no way"])
    assert exited.value.code == 2
    assert "argument --backend: backend 'http://vllm:8100#fast,no way': ['no way'] are not profile names" in \
        capsys.readouterr().err
