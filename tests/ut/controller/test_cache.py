"""The semantic cache against a real redis-server and the real MiniLM encoder."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from controller.cache import SemanticCache
from policies.schema import parse_policies

CONFIG = """\
version: 1
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.85, ttl_seconds: 60, max_entries: 3}
  - name: code
    keywords: [python]
    policy: {similarity_threshold: 0.95, ttl_seconds: 60, max_entries: 3}
"""
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris"}, "finish_reason": "stop"}]}


@pytest.fixture
def config():
    return parse_policies(CONFIG, "test.yaml")


@pytest.fixture
def cache(redis_client, config, encoder):
    return SemanticCache(redis_client, config, encoder.dim)


def vec(encoder, text):
    return encoder.encode([text])[0]


async def put(cache, encoder, text, partition="p1", tenant="t1", category="qa", ttl=60):
    return await cache.store(category, partition, tenant, vec(encoder, text), text, ANSWER, ttl, {})


async def test_paraphrase_hits_within_category_and_partition(cache, encoder):
    await put(cache, encoder, "What is the capital of France?")
    hit = await cache.lookup("qa", "p1", vec(encoder, "What's the capital city of France?"), 0.85)
    assert hit is not None and hit.response == ANSWER and 0.85 <= hit.similarity < 1.0
    # the same text in another tenant's partition, or another category, misses
    assert await cache.lookup("qa", "p2", vec(encoder, "What is the capital of France?"), 0.85) is None
    assert await cache.lookup("code", "p1", vec(encoder, "What is the capital of France?"), 0.0) is None
    # an unrelated question misses at the threshold
    assert await cache.lookup("qa", "p1", vec(encoder, "How do I bake bread?"), 0.85) is None


async def test_hit_counts_in_redis(cache, encoder, redis_client):
    key = await put(cache, encoder, "Who wrote Hamlet?")
    for _ in range(2):
        assert await cache.lookup("qa", "p1", vec(encoder, "Who wrote Hamlet?"), 0.85)
    assert int(await redis_client.hget(key, "hits")) == 2


async def test_ttl_expiry_turns_hit_into_miss(cache, encoder, redis_client):
    key = await put(cache, encoder, "How tall is Mount Everest?", ttl=1)
    assert 0 < await redis_client.ttl(key) <= 1
    query = vec(encoder, "How tall is Mount Everest?")
    assert await cache.lookup("qa", "p1", query, 0.85) is not None
    await asyncio.sleep(1.2)
    assert await cache.lookup("qa", "p1", query, 0.85) is None
    assert not await redis_client.exists(key)


async def test_quota_eviction_keeps_index_and_redis_consistent(cache, encoder, redis_client):
    texts = ["What is the capital of France?", "Who wrote Hamlet?", "How tall is Everest?"]
    keys = [await put(cache, encoder, t) for t in texts]
    # use the first entry so the second becomes least recently used
    assert await cache.lookup("qa", "p1", vec(encoder, texts[0]), 0.85)
    new = await put(cache, encoder, "When did the Second World War end?")
    live = {e.key for e in cache.indexes["qa"].entries.values()}
    assert live == {keys[0], keys[2], new}
    stored = {k.decode() async for k in redis_client.scan_iter("va:doc:qa:*")}
    assert stored == live
    assert cache.indexes["qa"].quota_evictions == 1
    assert await cache.lookup("qa", "p1", vec(encoder, texts[1]), 0.85) is None
    # many more inserts stay within quota in both places (slots are reused)
    for i in range(10):
        await put(cache, encoder, f"Question number {i} about rivers")
    stored = {k.decode() async for k in redis_client.scan_iter("va:doc:qa:*")}
    assert stored == {e.key for e in cache.indexes["qa"].entries.values()} and len(stored) == 3


async def test_restart_rebuilds_index_with_nothing_lost(cache, encoder, redis_client, config):
    texts = {"qa": ["What is the capital of France?", "Who wrote Hamlet?"], "code": ["python list reverse"]}
    for category, items in texts.items():
        for t in items:
            await put(cache, encoder, t, category=category, tenant="tenant-a")
    fresh = SemanticCache(redis_client, config, encoder.dim)
    assert await fresh.rebuild() == 3
    for category, items in texts.items():
        for t in items:
            hit = await fresh.lookup(category, "p1", vec(encoder, t), 0.99)
            assert hit is not None and hit.similarity > 0.99
    assert await fresh.invalidate(tenant="tenant-a") == 3
    assert [k async for k in redis_client.scan_iter("va:doc:*")] == []


async def test_invalidate_by_category(cache, encoder, redis_client):
    await put(cache, encoder, "What is the capital of France?")
    await put(cache, encoder, "python sort dict", category="code")
    assert await cache.invalidate(category="code") == 1
    assert cache.size("code") == 0 and cache.size("qa") == 1
    assert len([k async for k in redis_client.scan_iter("va:doc:*")]) == 1


async def test_redis_down_is_a_miss_not_an_error(config, encoder, redis_server):
    from controller.procs import free_port

    dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
    cache = SemanticCache(dead, config, encoder.dim)
    v = vec(encoder, "What is the capital of France?")
    assert await cache.store("qa", "p1", "t1", v, "q", ANSWER, 60, {}) is None
    assert cache.size("qa") == 0  # nothing indexed that Redis does not hold
    assert await cache.lookup("qa", "p1", v, 0.5) is None
    await dead.aclose()


async def test_expired_entries_make_room_before_lru_eviction(cache, encoder, redis_client):
    short = [await put(cache, encoder, t, ttl=1) for t in ("Who wrote Hamlet?", "How tall is Everest?")]
    keep = await put(cache, encoder, "What is the capital of France?")
    await asyncio.sleep(1.2)
    new = await put(cache, encoder, "When did the Second World War end?")
    assert {e.key for e in cache.indexes["qa"].entries.values()} == {keep, new}
    assert cache.indexes["qa"].quota_evictions == 0  # TTL expiry is not a quota eviction
    assert not any([await redis_client.exists(k) for k in short])


async def test_smaller_quota_on_reload_deletes_documents(cache, encoder, redis_client):
    keys = [await put(cache, encoder, t) for t in ("Who wrote Hamlet?", "How tall is Everest?", "Capital of Peru?")]
    await cache.reconfigure(parse_policies(CONFIG.replace("max_entries: 3}\n  - name: code", "max_entries: 1}\n  - name: code"), "x"))
    live = {e.key for e in cache.indexes["qa"].entries.values()}
    assert live == {keys[2]}
    assert {k.decode() async for k in redis_client.scan_iter("va:doc:qa:*")} == live


async def test_an_entry_is_found_however_many_were_deleted_before_it(redis_client, encoder):
    """hnswlib's filtered search missed the only live entry among deleted ones (seen after 43
    store/invalidate rounds); small partitions are now searched exactly."""
    config = parse_policies(CONFIG.replace("max_entries: 3}", "max_entries: 1000}", 1), "test.yaml")
    cache = SemanticCache(redis_client, config, encoder.dim)
    for i in range(120):
        text = f"Which river flows through the city with postcode {i * 7919}?"
        await cache.store("qa", f"p{i}", f"t{i}", vec(encoder, text), text, ANSWER, 60, {})
        hit = await cache.lookup("qa", f"p{i}", vec(encoder, text), 0.85)
        assert hit is not None, i
        assert await cache.invalidate(tenant=f"t{i}") == 1
