"""Fuzzing the HTTP API: thousands of generated requests (valid, malformed and hostile bodies,
headers and paths) against a live controller in front of the simulated backend. No response may
be a 5xx, the server must stay up, and nothing may be stored for a request that was refused.

`FUZZ_REQUESTS` sets the count (CI default 10,000; each case is one real HTTP request)."""

from __future__ import annotations

import json
import os
import string

import httpx
import pytest
from controller.keys import cache_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "10000"))

scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=True),
                    st.text(max_size=40))
junk = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                     st.dictionaries(st.text(max_size=8), inner, max_size=4)),
                    max_leaves=12)
words = st.text(alphabet=string.ascii_letters + " ?!0123456789éß\u4e2d\U0001f600\x00", min_size=0, max_size=60)
message = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "tool", "x"]),
                                 "content": st.one_of(words, st.lists(st.fixed_dictionaries(
                                     {"type": st.sampled_from(["text", "image_url"]), "text": words}), max_size=2), junk)})
chat_body = st.fixed_dictionaries(
    {"model": st.one_of(st.just("sim"), junk), "messages": st.one_of(st.lists(message, max_size=4), junk)},
    optional={"temperature": st.one_of(st.sampled_from([0, 0.0, 0.7, 2]), junk), "stream": st.one_of(st.booleans(), junk),
              "n": st.one_of(st.integers(0, 3), junk), "max_tokens": junk, "vllm_xargs": st.one_of(
                  st.fixed_dictionaries({"adaptive_profile": st.one_of(words, junk)}), junk),
              "tools": junk, "tool_choice": st.one_of(st.just("required"), junk), "extra": junk})
completion_body = st.fixed_dictionaries({"model": st.just("sim")},
                                        optional={"prompt": st.one_of(words, junk), "temperature": junk, "stream": junk})
headers = st.dictionaries(
    st.sampled_from(["x-adaptive-category", "cache-control", "authorization", "x-admin-token", "content-type"]),
    st.one_of(st.sampled_from(["chat", "code", "factual", "nope", "no-cache", "no-store", "Bearer k1", "t0k"]),
              st.text(alphabet=string.printable.strip(), max_size=30)), max_size=3)
cacheable_chat = st.fixed_dictionaries(  # well-formed and cacheable: reaches lookup and store
    {"model": st.just("sim"), "temperature": st.just(0), "stream": st.booleans(),
     "messages": st.lists(message, max_size=2).map(lambda m: m + [{"role": "user", "content": "q"}]).flatmap(
         lambda m: words.map(lambda w: m[:-1] + [{"role": "user", "content": w}]))})
case = st.one_of(
    st.tuples(st.just("POST"), st.just("/v1/chat/completions"), cacheable_chat.map(json.dumps), headers),
    st.tuples(st.just("POST"), st.just("/v1/chat/completions"), chat_body.map(json.dumps), headers),
    st.tuples(st.just("POST"), st.just("/v1/completions"), completion_body.map(json.dumps), headers),
    st.tuples(st.just("POST"), st.sampled_from(["/v1/chat/completions", "/v1/completions"]),
              st.one_of(junk.map(json.dumps), st.binary(max_size=64).map(lambda b: b.decode("latin-1"))), headers),
    st.tuples(st.sampled_from(["GET", "POST", "PUT", "DELETE"]),
              st.sampled_from(["/admin/invalidate", "/admin/reload", "/admin/effective", "/v1/models", "/metrics",
                               "/health", "/nope", "/v1/chat/completions"]), junk.map(json.dumps), headers),
)


@pytest.fixture(scope="module")
def fuzzed_controller(sim_backend, redis_server, encoder, policies_path):
    import redis

    from tests.conftest import ControllerHandle

    redis.Redis.from_url(redis_server.url).flushdb()  # only what the fuzzer stores is checked after
    handle = ControllerHandle(policies_path, [sim_backend], redis_server.url, encoder)
    yield handle
    handle.stop()


def test_fuzzed_requests_never_get_a_5xx_and_refused_ones_store_nothing(fuzzed_controller):
    import redis

    url = fuzzed_controller.url
    client = httpx.Client(timeout=30)
    stats = {"sent": 0, "5xx": [], "answered": set()}

    @settings(max_examples=REQUESTS, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(case)
    def send(c):
        method, path, body, hdrs = c
        reply = client.request(method, url + path, content=body.encode("utf-8", "surrogatepass"), headers=hdrs)
        stats["sent"] += 1
        if reply.status_code >= 500:
            stats["5xx"].append((method, path, body[:200], hdrs, reply.status_code, reply.text[:200]))
        elif reply.status_code == 200 and path in ("/v1/chat/completions", "/v1/completions"):
            stats["answered"].add((path, body))

    send()
    assert stats["sent"] >= REQUESTS * 0.9  # hypothesis may dedupe a few
    assert stats["5xx"] == [], stats["5xx"][:5]
    assert client.get(url + "/health").status_code == 200
    # Every stored query comes from a request that was answered 200 (nothing from refused ones).
    r = redis.Redis.from_url(fuzzed_controller.ctl.settings.redis_url)
    stored = [r.hget(k, "query").decode() for k in r.scan_iter("va:doc:*")]
    assert stored, "no request was ever cached: the fuzzer does not reach the store path"
    keys = (cache_key("chat" if "chat" in path else "completions", json.loads(body), {}, "authorization", 4)
            for path, body in stats["answered"])
    answered = {key.query for key in keys if key is not None}
    assert set(stored) <= answered
