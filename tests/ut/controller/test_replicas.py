"""Several controller replicas on one Redis share what they cache through the change feed:
answers, evictions and invalidations reach every replica; quotas are global; a replica that
fell behind a trimmed feed rebuilds from the documents. Real Redis, real HTTP, real encoder."""

from __future__ import annotations

import asyncio
import time

import httpx
import numpy as np

from controller.cache import SemanticCache
from controller.feed import ChangeFeed
from policies.schema import parse_policies


def ask(url, content):
    return httpx.post(url + "/v1/chat/completions", timeout=30, headers={"X-Adaptive-Category": "factual"}, json={
        "model": "m", "temperature": 0, "messages": [{"role": "user", "content": content}]})


def until(check, timeout=5.0):
    """Seconds until `check()` held (polled every 10 ms), or None."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return time.monotonic() - t0
        time.sleep(0.01)
    return None


async def test_replicas_serve_each_others_answers_and_invalidations(sim_backend, start_controller, redis_client):
    a, b = start_controller([sim_backend]), start_controller([sim_backend])
    delays = []
    for i in range(5):
        question = f"What is the boiling point of liquid number {i}?"
        assert ask(a.url, question).headers["x-cache"] == "MISS"
        delays.append(until(lambda: b.ctl.cache.size("factual") > i))
        reply = ask(b.url, question)
        assert reply.headers["x-cache"] == "HIT" and reply.json()["choices"][0]["message"]["content"].endswith(question)
    assert all(d is not None and d < 1.0 for d in delays), delays
    admin = {"X-Admin-Token": a.admin_token}
    gone = httpx.post(a.url + "/admin/invalidate", headers=admin, json={"category": "factual"}, timeout=30)
    assert gone.json()["invalidated"] == 5
    assert until(lambda: b.ctl.cache.size("factual") == 0) is not None
    assert ask(b.url, "What is the boiling point of liquid number 0?").headers["x-cache"] == "MISS"


async def test_quota_is_global_across_replicas(sim_backend, start_controller, redis_client, policy_copy):
    config = policy_copy
    text = config.read_text()
    assert "max_entries: 50000" in text
    config.write_text(text.replace("max_entries: 50000", "max_entries: 3"))
    a, b = start_controller([sim_backend], config_path=config), start_controller([sim_backend], config_path=config)
    for i in range(7):
        ask((a, b)[i % 2].url, f"Who was the king of country number {i}?")
        time.sleep(0.05)
    keys = {k.decode() for k in await redis_client.keys("va:doc:factual:*")}
    assert len(keys) == 3
    assert until(lambda: set(a.ctl.cache.indexes["factual"].by_key) == set(b.ctl.cache.indexes["factual"].by_key) == keys)


POLICY = """
version: 1
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.9, ttl_seconds: 600, max_entries: 100}
"""


async def test_a_replica_behind_a_trimmed_feed_rebuilds_from_the_documents(redis_client):
    config = parse_policies(POLICY)
    one = SemanticCache(redis_client, config, 4, feed=ChangeFeed(redis_client, "va"))
    two = SemanticCache(redis_client, config, 4, feed=ChangeFeed(redis_client, "va"))
    await one.rebuild()
    await two.rebuild()
    rng = np.random.default_rng(0)
    keys = []
    for i in range(3):
        vector = rng.normal(size=4).astype(np.float32)
        keys.append(await one.store("qa", "p", "t", vector / np.linalg.norm(vector), f"q{i}", {"choices": []}, 600, {}))
    await redis_client.xtrim(one.feed.key, maxlen=0)  # `two` never read those events
    follower = asyncio.create_task(two.feed.follow(two.apply, two.resync))
    for _ in range(200):
        if two.size("qa") == 3:
            break
        await asyncio.sleep(0.01)
    follower.cancel()
    assert two.feed.rebuilds == 1 and set(two.indexes["qa"].by_key) == set(keys)
