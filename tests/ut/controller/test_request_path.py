"""The controller's request path over real HTTP, real Redis and the real encoder, in front of the
simulated vLLM backend (bench.sim_backend: a real HTTP server in vLLM's wire format, standing in
for a GPU fleet) — no vLLM engine, so `-m "not engine"` covers it."""

from __future__ import annotations

import json
import time

import httpx
import pytest


FACTUAL = {"X-Adaptive-Category": "factual"}  # tests of the request path do not depend on the classifier


def chat(url, content, key="sk-a", stream=False, headers=None, **extra):
    body = {"model": "sim", "temperature": 0, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": content}], **extra}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"Authorization": f"Bearer {key}", **(FACTUAL if headers is None else headers)})


def sse_events(text):
    events = [line[6:] for line in text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


@pytest.fixture
def config(policy_copy):
    return policy_copy


async def test_hit_miss_bypass_and_stream_replay(sim_backend, start_controller, redis_client):
    ctl = start_controller([sim_backend])
    first = chat(ctl.url, "What is the capital of Austria?")
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    assert first.headers["x-backend"] == sim_backend
    again = chat(ctl.url, "What is the capital of Austria?", stream=True)
    assert again.headers["x-cache"] == "HIT"
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in sse_events(again.text))
    assert text == first.json()["choices"][0]["message"]["content"] == "ANSWER: What is the capital of Austria?"
    assert chat(ctl.url, "What is the capital of Austria?", temperature=0.7).headers["x-cache"] == "BYPASS"
    assert chat(ctl.url, "What is the capital of Austria?", key="sk-b").headers["x-cache"] == "MISS"


async def test_reload_that_removes_a_category_then_a_request_naming_it_is_a_4xx(
        sim_backend, start_controller, config, redis_client):
    ctl = start_controller([sim_backend], config_path=config)
    named = {"X-Adaptive-Category": "chat"}
    assert chat(ctl.url, "Tell me a joke", headers=named).status_code == 200
    text = config.read_text()
    start = text.index("  - name: chat")
    config.write_text(text[:start])  # chat is the last category: drop it
    reload = httpx.post(ctl.url + "/admin/reload", headers={"X-Admin-Token": ctl.admin_token}, timeout=30)
    assert reload.status_code == 200 and "chat" not in reload.json()["categories"]
    refused = chat(ctl.url, "Tell me a joke", headers=named)
    assert refused.status_code == 400, refused.text
    error = refused.json()["error"]
    assert "'chat'" in error["message"] and error["param"] == "x-adaptive-category"
    assert chat(ctl.url, "Tell me a joke", headers={}).status_code == 200  # naming no category still works
    gone = httpx.post(ctl.url + "/admin/invalidate", json={"category": "chat"}, timeout=30,
                      headers={"X-Admin-Token": ctl.admin_token})
    assert gone.status_code == 404


async def test_shrinking_load_levels_by_reload_clamps_the_level_and_the_monitor_lives_on(
        sim_backend, start_controller, config, redis_client):
    config.write_text(config.read_text().replace("scrape_interval_seconds: 2.0", "scrape_interval_seconds: 0.1"))
    ctl = start_controller([sim_backend], config_path=config)
    ctl.ctl.load.level = 3  # as if the fleet were saturated
    config.write_text(config.read_text().replace("level_thresholds: [0.5, 0.75, 0.9]", "level_thresholds: [0.9]"))
    admin = {"X-Admin-Token": ctl.admin_token}
    assert httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30).status_code == 200
    assert ctl.ctl.load.level <= 1
    backend = ctl.ctl.pool.backends[0]
    seen = backend.scraped_at
    deadline = time.monotonic() + 10
    while backend.scraped_at == seen and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.scraped_at > seen  # the monitor still scrapes after the reload
    deadline = time.monotonic() + 10
    while ctl.ctl.load.level != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert ctl.ctl.load.level == 0  # the idle backend brought the level down: nothing froze
    effective = httpx.get(ctl.url + "/admin/effective", headers=admin, timeout=30).json()
    assert effective["level"] == 0 and effective["categories"]["chat"]["level"] == 0


TOOLS = [{"type": "function", "function": {"name": "lookup", "description": "look something up",
                                           "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]


@pytest.mark.parametrize("stream", [False, True])
async def test_tool_call_answers_are_relayed_whole_and_never_cached(
        sim_backend, start_controller, redis_client, stream):
    ctl = start_controller([sim_backend])
    ask = dict(tools=TOOLS, tool_choice="required", stream=stream)
    first = chat(ctl.url, "Find the population of Vienna", **ask)
    assert first.status_code == 200 and first.headers["x-cache"] == "MISS"
    if stream:
        calls = [c for e in sse_events(first.text) for c in e["choices"][0]["delta"].get("tool_calls") or []]
        args = "".join(c["function"].get("arguments", "") for c in calls)
        assert calls[0]["function"]["name"] == "lookup" and json.loads(args) == {"query": "Find the population of Vienna"}
    else:
        assert first.json()["choices"][0]["message"]["tool_calls"][0]["function"]["name"] == "lookup"
    second = chat(ctl.url, "Find the population of Vienna", **ask)
    assert second.headers["x-cache"] == "MISS"  # not stored: a replayed tool call would act again
    assert await redis_client.keys("va:doc:*") == []
    text = chat(ctl.url, "Find the population of Vienna", tools=TOOLS, stream=stream)  # text answer, same tools
    assert text.headers["x-cache"] == "MISS"
    assert chat(ctl.url, "Find the population of Vienna", tools=TOOLS).headers["x-cache"] == "HIT"


async def test_the_profile_reported_and_stored_is_the_one_sent(sim_backend, start_controller, redis_client):
    ctl = start_controller([sim_backend])
    own = chat(ctl.url, "How tall is the Eiffel tower?", vllm_xargs={"adaptive_profile": "fastest"})
    assert own.headers["x-adaptive-profile"] == "fastest" and own.headers["x-adaptive-profile-source"] == "client"
    (key,) = await redis_client.keys("va:doc:*")
    assert await redis_client.hget(key, "profile") == b"fastest"
    stats = httpx.get(sim_backend + "/stats").json()["profiles"]
    assert stats.get("fastest", 0) >= 1
    # The client's profile is part of what the answer may be shared across.
    plain = chat(ctl.url, "How tall is the Eiffel tower?")
    assert plain.headers["x-cache"] == "MISS" and plain.headers["x-adaptive-profile"] == "full"
    assert plain.headers["x-adaptive-profile-source"] == "policy"
    assert chat(ctl.url, "How tall is the Eiffel tower?", vllm_xargs={"adaptive_profile": "fastest"}).headers["x-cache"] == "HIT"


async def test_a_brownout_answer_is_not_served_at_normal_load(
        sim_backend, start_controller, config, redis_client):
    text = config.read_text()
    config.write_text(text.replace("load: {threshold_floor: 0.89, ttl_max_seconds: 14400}}",
                                   "load: {threshold_floor: 0.89, ttl_max_seconds: 14400, profile_ladder: [fast]}}")
                      .replace(", max_quality_loss: {delta_ppl_pct: 20, min_answer_similarity: 0.6}", "")  # fast: unmeasured
                      .replace("scrape_interval_seconds: 2.0", "scrape_interval_seconds: 3600"))
    ctl = start_controller([sim_backend], config_path=config)
    named = {"X-Adaptive-Category": "chat"}
    ctl.wait_first_scrape()
    ctl.ctl.load.level = 2
    brownout = chat(ctl.url, "Tell me something nice", headers=named)
    assert brownout.headers["x-adaptive-profile"] == "fast" and brownout.headers["x-cache"] == "MISS"
    assert chat(ctl.url, "Tell me something nice", headers=named).headers["x-cache"] == "HIT"  # still browned out
    ctl.ctl.load.level = 0
    normal = chat(ctl.url, "Tell me something nice", headers=named)
    assert normal.headers["x-cache"] == "MISS" and normal.headers["x-adaptive-profile"] == "full"
    ctl.ctl.load.level = 2  # under load, the full-quality answer is served
    assert chat(ctl.url, "Tell me something nice", headers=named).headers["x-cache"] == "HIT"


class CountingEncoder:
    """The real encoder, counting how many texts it was asked to embed."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dim, self.calls = inner, inner.name, inner.dim, 0

    def encode(self, texts):
        self.calls += len(texts)
        return self.inner.encode(texts)


async def test_each_request_is_embedded_at_most_once_and_only_when_needed(
        sim_backend, start_controller, encoder, redis_client):
    counting = CountingEncoder(encoder)
    ctl = start_controller([sim_backend], encoder_=counting)
    counting.calls = 0  # the classifier's examples were embedded at start-up
    chat(ctl.url, "Who painted the Mona Lisa?", headers={})  # classify + lookup + store: one embedding
    assert counting.calls == 1
    chat(ctl.url, "What is the weather in Paris today?", headers={"X-Adaptive-Category": "time_sensitive"})
    assert counting.calls == 1  # named, uncacheable category: nothing needs the vector
    httpx.post(ctl.url + "/v1/chat/completions", timeout=30, json={
        "model": "sim", "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}]})
    assert counting.calls == 1  # no cacheable shape, no classification
    chat(ctl.url, "Who painted the Mona Lisa?", headers={"Cache-Control": "no-store, no-cache"})
    assert counting.calls == 2  # classified, but neither read nor written


async def test_bad_requests_are_openai_4xx(sim_backend, start_controller, redis_client):
    ctl = start_controller([sim_backend])
    post = lambda **kw: httpx.post(ctl.url + "/v1/chat/completions", timeout=30, **kw)  # noqa: E731
    for reply, param in [(post(content=b"{nope"), None), (post(json=[1, 2]), None),
                         (post(json={"model": "sim", "messages": "hi"}), "messages"),
                         (post(json={"model": "sim", "messages": [], "vllm_xargs": [1]}), "vllm_xargs")]:
        assert reply.status_code == 400 and reply.json()["error"]["param"] == param
    assert httpx.post(ctl.url + "/v1/completions", json={"model": "sim"}, timeout=30).status_code == 400
    assert httpx.get(ctl.url + "/admin/effective", timeout=30).status_code == 401


async def test_a_greeting_or_thanks_changes_neither_the_category_nor_the_answer(sim_backend, start_controller,
                                                                                  redis_client):
    """The classifier reads the question without its wrapping (the example policy's classifier put
    "what is the capital of france? Thanks!" in time_sensitive, which bypasses the cache)."""
    ctl = start_controller([sim_backend])
    first = chat(ctl.url, "What is the capital of France?", headers={})
    assert first.headers["x-cache"] == "MISS"
    for wrapped in ("what is the capital of france? Thanks!", "Hi! What is the capital of France?",
                    "Please tell me: what is the capital of France? Thank you."):
        reply = chat(ctl.url, wrapped, headers={})
        assert reply.headers["x-cache-category"] == first.headers["x-cache-category"], wrapped
        assert reply.headers["x-cache"] == "HIT" and reply.json()["choices"] == first.json()["choices"], wrapped
