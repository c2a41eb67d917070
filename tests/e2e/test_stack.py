"""Controller in front of a real vLLM server (SmolLM2, adaptive plugin), over real HTTP and Redis."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import httpx
import pytest

from tests.e2e.conftest import SERVER_PROFILES

pytestmark = pytest.mark.engine


def ask(url, content, key="sk-a", stream=False, **extra):
    body = {"model": "smollm2", "temperature": 0, "max_tokens": 24, "stream": stream,
            "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {key}"})


def sse_events(text):
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.fixture
async def flushed(redis_client):
    return redis_client


def test_chat_through_controller_is_generated_by_smollm2_with_plugin(vllm_server, start_controller, flushed):
    ctl = start_controller([vllm_server])
    first = ask(ctl.url, "What is the capital of France?")
    assert first.status_code == 200, first.text
    assert first.headers["x-cache"] == "MISS" and first.headers["x-cache-category"] == "factual"
    assert "Paris" in first.json()["choices"][0]["message"]["content"]
    models = httpx.get(ctl.url + "/v1/models", timeout=30).json()["data"]
    assert models[0]["id"] == "smollm2"
    assert models[0]["adaptive"]["active"] is True
    worker = models[0]["adaptive"]["workers"][0]
    assert worker["runtime_model_class"] == "LlamaForCausalLM" and worker["stacks"][0]["per_request"] is True

    # A near-repeat the verified factual policy serves (a reworded paraphrase is, deliberately, not:
    # configs/policies.yaml bounds false hits at 1 %).
    paraphrase = ask(ctl.url, "What's the capital of France?")
    assert paraphrase.headers["x-cache"] == "HIT"
    assert float(paraphrase.headers["x-cache-similarity"]) < 1.0
    assert paraphrase.json()["choices"] == first.json()["choices"]
    other_tenant = ask(ctl.url, "What is the capital of France?", key="sk-b")
    assert other_tenant.headers["x-cache"] == "MISS"
    sampled = ask(ctl.url, "What is the capital of France?", temperature=0.8)
    assert sampled.headers["x-cache"] == "BYPASS"
    bypass = httpx.post(ctl.url + "/v1/chat/completions", timeout=120, headers={
        "Authorization": "Bearer sk-a", "Cache-Control": "no-cache"}, json={
        "model": "smollm2", "temperature": 0, "max_tokens": 8,
        "messages": [{"role": "user", "content": "What is the capital of France?"}]})
    assert bypass.headers["x-cache"] == "BYPASS"
    metrics = httpx.get(ctl.url + "/metrics").text
    assert 'adaptive_cache_hits_total{category="factual"} 1.0' in metrics


def test_streamed_miss_is_cached_and_hit_replays_valid_sse(vllm_server, start_controller, flushed):
    ctl = start_controller([vllm_server])
    miss = ask(ctl.url, "Who wrote the play Hamlet?", stream=True)
    assert miss.headers["x-cache"] == "MISS" and miss.headers["content-type"].startswith("text/event-stream")
    streamed = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(miss.text))
    hit = ask(ctl.url, "Who wrote the play Hamlet?", stream=True)
    assert hit.headers["x-cache"] == "HIT"
    events = sse_events(hit.text)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events) == streamed
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    as_json = ask(ctl.url, "Who wrote the play Hamlet?")
    assert as_json.headers["x-cache"] == "HIT"
    assert as_json.json()["choices"][0]["message"]["content"] == streamed


def test_completions_endpoint_and_bad_requests(vllm_server, start_controller, flushed):
    ctl = start_controller([vllm_server])
    body = {"model": "smollm2", "prompt": "The capital of France is", "max_tokens": 5, "temperature": 0}
    first = httpx.post(ctl.url + "/v1/completions", json=body, timeout=120)
    second = httpx.post(ctl.url + "/v1/completions", json=body, timeout=120)
    assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
    assert second.json()["choices"][0]["text"] == first.json()["choices"][0]["text"]
    bad = httpx.post(ctl.url + "/v1/chat/completions", content=b"{not json", timeout=30)
    assert bad.status_code == 400 and bad.json()["error"]["type"] == "invalid_request_error"
    unknown = httpx.post(ctl.url + "/v1/chat/completions", timeout=30, headers={"X-Adaptive-Category": "nope"},
                         json={"model": "smollm2", "messages": [{"role": "user", "content": "hi"}]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "x-adaptive-category"
    upstream_4xx = ask(ctl.url, "hi", max_tokens=-3)  # vLLM's own validation error is passed through
    assert upstream_4xx.status_code == 400 and "error" in upstream_4xx.json()


def test_dead_backend_is_skipped(vllm_server, start_controller, flushed):
    from controller.procs import free_port

    ctl = start_controller([f"http://127.0.0.1:{free_port()}", vllm_server])
    for topic in ("cats", "dogs", "owls"):
        reply = ask(ctl.url, f"Name one fact about {topic}", max_tokens=8)
        assert reply.status_code == 200 and reply.headers["x-backend"] == vllm_server
    effective = httpx.get(ctl.url + "/admin/effective", headers={"X-Admin-Token": ctl.admin_token}, timeout=30)
    dead = [b for b in effective.json()["backends"] if b["url"] != vllm_server]
    assert effective.status_code == 200 and dead[0]["up"] is False and dead[0]["score"] is None
    dead_only = start_controller([f"http://127.0.0.1:{free_port()}"])
    reply = ask(dead_only.url, "Tell me a joke about cats", max_tokens=8)
    assert reply.status_code == 503 and reply.json()["error"]["type"] == "service_unavailable"


def test_invalid_reload_keeps_old_policy(vllm_server, start_controller, policies_path, policy_copy, flushed):
    config = policy_copy
    ctl = start_controller([vllm_server], config_path=config)
    admin = {"X-Admin-Token": ctl.admin_token}
    config.write_text(policies_path.read_text().replace("max_entries: 20000", "max_entries: -1", 1))
    refused = httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30)
    assert refused.status_code == 422 and "max_entries" in refused.json()["error"]["message"]
    assert ask(ctl.url, "What is 17 times 23?", max_tokens=8).status_code == 200
    assert httpx.post(ctl.url + "/admin/reload", timeout=30).status_code == 401
    text, n = re.subn(r"(- name: math\n(?:.*\n)*?    policy: \{similarity_threshold: )[0-9.]+", r"\g<1>0.5",
                      policies_path.read_text(), count=1)
    assert n == 1
    config.write_text(text)
    assert httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30).status_code == 200
    assert ctl.app.state.ctl.snapshot.config.category("math").policy.similarity_threshold == 0.5
    gone = httpx.post(ctl.url + "/admin/invalidate", headers=admin, json={"category": "math"}, timeout=30)
    assert gone.json()["invalidated"] == 1


def test_invalid_yaml_refuses_to_start(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("version: 1\ndefault_category: chat\ncategories:\n  - name: chat\n    policy:\n"
                   "      similarity_threshold: 2\n      ttl_seconds: 5\n      max_entries: 5\n")
    proc = subprocess.run([sys.executable, "-m", "controller.cli", "serve", "--config", str(bad),
                           "--backend", "http://127.0.0.1:9", "--redis", "redis://127.0.0.1:9/0"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"{bad}:6: categories[0=chat].policy.similarity_threshold:" in proc.stderr


def test_sighup_reloads_policy_in_the_served_process(tmp_path, policies_path, policy_copy):
    """`adaptive-controller serve` with its embedded Redis: SIGHUP applies a valid file, keeps the
    old policy on an invalid one. (The backend is never called here.)"""
    import signal
    import time

    from controller.procs import free_port, stop_group, wait_http

    config = policy_copy
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--config", str(config),
                             "--backend", "http://127.0.0.1:9", "--port", str(port),
                             "--data-dir", str(tmp_path / "redis")], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def categories():
        return {line.split('"')[1] for line in httpx.get(url + "/metrics").text.splitlines()
                if line.startswith("adaptive_cache_entries{")}

    try:
        assert wait_http(url + "/health", proc, 120)
        assert "legal" not in categories()
        config.write_text(policies_path.read_text() + (
            "  - name: legal\n    keywords: [contract]\n"
            "    policy: {similarity_threshold: 0.97, ttl_seconds: 60, max_entries: 10}\n"))
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 30
        while "legal" not in categories() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "legal" in categories()
        config.write_text("categories: [oops")
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        assert proc.poll() is None and "legal" in categories()
    finally:
        stop_group(proc)
    assert (tmp_path / "redis" / "redis.log").exists()  # the embedded Redis ran under --data-dir


def test_brownout_profile_reaches_the_plugin(vllm_server, start_controller, policies_path, policy_copy, flushed):
    """Under load the category's next compute profile is sent and applied by the plugin.

    The load level is set by hand after one real scrape: driving a 2-core CPU backend into a
    deterministic queue in a test is not feasible (the closed-loop bench does that). Everything
    downstream of the level is real: the controller's decision, the request, vLLM's plugin."""
    config = policy_copy
    original = policies_path.read_text()
    text = original.replace("load: {threshold_floor: 0.89, ttl_max_seconds: 14400}}",
                            "load: {threshold_floor: 0.89, ttl_max_seconds: 7200, profile_ladder: [fast, fastest]}}")
    assert text != original
    config.write_text(text.replace("scrape_interval_seconds: 2.0", "scrape_interval_seconds: 3600")
                      .replace(", max_quality_loss: {delta_ppl_pct: 20, min_answer_similarity: 0.6}", ""))  # unmeasured
    ctl = start_controller([vllm_server], config_path=config)
    admin = {"X-Admin-Token": ctl.admin_token}
    ctl.wait_first_scrape()  # which also read the backend's profiles
    effective = httpx.get(ctl.url + "/admin/effective", headers=admin, timeout=30).json()
    (backend,) = effective["backends"]
    assert backend["up"] and backend["scrape_age_seconds"] < 60 and backend["score"] < 1.0  # scraped, idle
    assert backend["serves"] == sorted({"full", *SERVER_PROFILES}) and backend["default_profile"] == "full"  # read from
    # the plugin's status route: an eager engine serves its profiles per request
    assert effective["level"] == 0 and effective["categories"]["chat"]["compute_profile"] == "full"

    def calls():
        return httpx.get(vllm_server + "/v1/adaptive/status", timeout=30).json()["workers"][0]["layer_calls"]

    ctl.app.state.ctl.load.level = 1  # brownout
    effective = httpx.get(ctl.url + "/admin/effective", headers=admin, timeout=30).json()["categories"]["chat"]
    assert effective == {"level": 1, "threshold": pytest.approx(0.89), "ttl_seconds": 4800,  # floor = threshold
                         "compute_profile": "fast"}
    before = calls()
    reply = ask(ctl.url, "Hello there, how is your day going?", max_tokens=4, **{"vllm_xargs": {}})
    after = calls()
    assert reply.status_code == 200, reply.text
    assert reply.headers["x-cache-category"] == "chat" and reply.headers["x-cache"] == "MISS", dict(reply.headers)
    assert reply.headers["x-adaptive-profile"] == "fast", dict(reply.headers)
    delta = [b - a for a, b in zip(before, after)]
    assert delta[14] == delta[15] == 0 and all(delta[i] > 0 for i in range(30) if i not in (14, 15))


LOOKUP_TOOL = [{"type": "function", "function": {
    "name": "lookup", "description": "Look a fact up in the encyclopedia",
    "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}}]


@pytest.mark.parametrize("stream", [False, True])
def test_vllm_tool_calls_are_relayed_and_never_cached(vllm_server, start_controller, flushed, stream):
    """vLLM emits a tool call from any model with `tool_choice: "required"` (structured output)."""
    ctl = start_controller([vllm_server])
    kw = dict(stream=stream, tools=LOOKUP_TOOL, tool_choice="required", max_tokens=96)
    first = ask(ctl.url, "Look up the population of Vienna", **kw)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS", first.text
    if stream:
        deltas = [c for e in sse_events(first.text) for c in (e["choices"] or [{}])[0].get("delta", {}).get("tool_calls") or []]
        assert deltas and deltas[0]["function"]["name"] == "lookup"
        json.loads("".join(d["function"].get("arguments") or "" for d in deltas))
    else:
        (call,) = first.json()["choices"][0]["message"]["tool_calls"]
        assert call["function"]["name"] == "lookup" and isinstance(json.loads(call["function"]["arguments"]), dict)
    again = ask(ctl.url, "Look up the population of Vienna", **kw)
    assert again.headers["x-cache"] == "MISS"
    assert httpx.get(ctl.url + "/metrics").text.count("adaptive_cache_stores_total{") == 0
