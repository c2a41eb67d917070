"""Verified hits through the whole request path: real HTTP, real Redis, the real encoder, the
simulated backend. A near-miss above the threshold is refused by the verifier and counted."""

from __future__ import annotations

import re
import time

import httpx

POLICY = """\
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.8, max_false_hit_rate: 0.01, ttl_seconds: 600, max_entries: 100,
             verifier: {name: guards, top_k: 4}}
"""


def ask(url, content):
    body = {"model": "sim", "temperature": 0, "max_tokens": 16, "messages": [{"role": "user", "content": content}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=30, headers={"Authorization": "Bearer k"})


def rejections(url) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    m = re.search(r'^adaptive_cache_verifier_rejections\{category="qa"\} (\S+)$', text, re.M)
    assert m is not None, "metric missing"
    return float(m.group(1))


async def test_near_miss_is_refused_and_counted_while_a_repeat_hits(sim_backend, start_controller, redis_client, tmp_path):
    config = tmp_path / "policies.yaml"
    config.write_text(POLICY)
    ctl = start_controller([sim_backend], config_path=config)
    assert ask(ctl.url, "Is it safe to take ibuprofen with alcohol?").headers["x-cache"] == "MISS"
    near_miss = ask(ctl.url, "Is it safe to take ibuprofen without alcohol?")
    assert near_miss.headers["x-cache"] == "MISS"
    assert near_miss.json()["choices"][0]["message"]["content"].endswith("without alcohol?")  # its own answer
    assert rejections(ctl.url) == 1
    repeat = ask(ctl.url, "is it safe to take ibuprofen with alcohol")
    assert repeat.headers["x-cache"] == "HIT" and float(repeat.headers["x-cache-similarity"]) >= 0.8
    assert repeat.json()["choices"][0]["message"]["content"].endswith("with alcohol?")


LOOSE = """\
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.5, max_false_hit_rate: 0.01, ttl_seconds: 600, max_entries: 100,
             shadow: {fraction: 1.0}}
"""


def metric(url, name) -> float:
    text = httpx.get(url + "/metrics", timeout=30).text
    m = re.search(rf'^{name}\{{category="qa"\}} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


async def test_shadow_check_catches_a_false_hit_and_tightens(sim_backend, start_controller, redis_client, tmp_path):
    """A deliberately loose threshold serves another question's answer; the shadow check sees the
    fresh answer differ and raises the category's threshold by itself."""
    config = tmp_path / "policies.yaml"
    config.write_text(LOOSE)
    ctl = start_controller([sim_backend], config_path=config)
    assert ask(ctl.url, "What is the capital of Austria?").headers["x-cache"] == "MISS"
    wrong = ask(ctl.url, "What is the capital of Australia?")
    assert wrong.headers["x-cache"] == "HIT"  # cosine alone at 0.5: the wrong answer is served
    deadline = time.time() + 30
    while metric(ctl.url, "adaptive_shadow_checks") < 1 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(ctl.url, "adaptive_shadow_false_hits") == 1
    assert metric(ctl.url, "adaptive_shadow_threshold_offset") == 0.01
    assert ctl.ctl.shadow.threshold("qa", 0.5) == 0.51
    assert ask(ctl.url, "What is the capital of Austria?").headers["x-cache"] == "HIT"  # a true repeat
    while metric(ctl.url, "adaptive_shadow_checks") < 2 and time.time() < deadline:
        time.sleep(0.1)
    assert metric(ctl.url, "adaptive_shadow_false_hits") == 1  # the fresh answer agreed
    assert metric(ctl.url, "adaptive_shadow_false_hit_upper") > 0.01  # 0 in 1 since tightening shows little
