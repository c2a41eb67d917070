"""controller.embed_batch with the real encoder: concurrent queries are encoded together and get
the vectors they would get alone; a late or failing embedding is None (a miss), never a stall."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import numpy as np
import pytest

from controller.embed_batch import EmbedBatcher
from controller.embeddings import encode_grouped, length_groups

QUERIES = ["What is the capital of Austria?", "How do I reverse a list in Python?", "Is it safe to take ibuprofen "
           "with alcohol?", "hi", "Write a haiku about autumn leaves falling on a quiet pond at dusk.",
           "What is 17 times 23?", "Who wrote Pride and Prejudice?", "Explain TCP slow start in two sentences."] * 2


class SlowEncoder:
    """The real encoder behind a gate: each call waits until `release` is set (fault injection)."""

    def __init__(self, inner) -> None:
        self.inner, self.name, self.dim = inner, inner.name, inner.dim
        self.release = threading.Event()
        self.texts: list[str] = []

    def encode(self, texts):
        self.texts += texts
        self.release.wait(10)
        return self.inner.encode(texts)


class BrokenEncoder:
    name, dim = "broken", 384

    def encode(self, texts):
        raise RuntimeError("encoder crashed")


async def test_concurrent_queries_are_batched_and_equal_their_single_vectors(encoder):
    batches: list[int] = []
    batcher = EmbedBatcher(encoder, max_batch=32, deadline_s=5.0, on_batch=batches.append)
    vectors = await asyncio.gather(*(batcher.embed(q) for q in QUERIES))
    await batcher.close()
    assert sum(batches) == len(QUERIES) and max(batches) > 1
    alone = np.stack([encoder.encode([q])[0] for q in QUERIES])
    assert np.allclose(np.stack(vectors), alone, atol=1e-5)  # padding in a batch changes nothing


async def test_max_batch_bounds_each_batch(encoder):
    batches: list[int] = []
    batcher = EmbedBatcher(encoder, max_batch=3, deadline_s=5.0, on_batch=batches.append)
    await asyncio.gather(*(batcher.embed(q) for q in QUERIES))
    await batcher.close()
    assert max(batches) == 3 and sum(batches) == len(QUERIES)


async def test_a_late_embedding_is_a_miss_and_queued_queries_past_their_deadline_are_dropped(encoder):
    slow = SlowEncoder(encoder)
    batcher = EmbedBatcher(slow, max_batch=1, deadline_s=0.1, workers=1)
    t0 = time.perf_counter()
    first, second = await asyncio.gather(batcher.embed("stuck query"), batcher.embed("queued behind it"))
    assert first is None and second is None
    assert time.perf_counter() - t0 < 1.0  # the deadline, not the encoder, decided
    slow.release.set()
    fresh = await batcher.embed("after the stall")
    await batcher.close()
    assert fresh is not None and np.allclose(fresh, encoder.encode(["after the stall"])[0], atol=1e-5)
    assert slow.texts == ["stuck query", "after the stall"]  # the expired query was never encoded


async def test_an_encoder_error_is_a_miss_and_the_worker_lives_on(encoder):
    batcher = EmbedBatcher(BrokenEncoder(), deadline_s=5.0)
    assert await batcher.embed("anything") is None
    batcher.encoder = encoder
    assert await batcher.embed("anything") is not None
    await batcher.close()


@pytest.mark.parametrize("slack", [1.0, 1.25, 2.0])
def test_length_groups_bound_the_padding_and_cover_every_text(slack):
    lengths = [len(q) for q in QUERIES] + [3, 300, 40, 41, 42]
    groups = length_groups(lengths, slack)
    assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
    for group in groups:
        assert max(lengths[i] for i in group) * len(group) <= slack * sum(lengths[i] for i in group) + 1e-9
    assert len(length_groups([10] * 8, slack)) == 1  # equal lengths: one batch


def test_grouped_encoding_keeps_the_order(encoder):
    assert np.allclose(encode_grouped(encoder, QUERIES[:8]), encoder.encode(QUERIES[:8]), atol=1e-5)


def test_bad_settings_are_refused(encoder):
    with pytest.raises(ValueError, match="max_batch"):
        EmbedBatcher(encoder, max_batch=0)


async def test_a_request_whose_embedding_misses_the_deadline_is_served_by_the_backend_uncached(
        sim_backend, start_controller, encoder, redis_client):
    slow = SlowEncoder(encoder)
    slow.release.set()  # start-up embeds the classifier's examples
    ctl = start_controller([sim_backend], encoder_=slow, embed_deadline=0.2)
    slow.release.clear()
    body = {"model": "sim", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Who painted the Mona Lisa?"}]}
    t0 = time.perf_counter()
    reply = httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30)
    assert reply.status_code == 200 and time.perf_counter() - t0 < 5
    assert reply.headers["x-cache"] == "BYPASS" and reply.json()["choices"][0]["message"]["content"]
    assert await redis_client.keys("va:doc:*") == []  # nothing stored without a vector
    slow.release.set()
    metrics = httpx.get(ctl.url + "/metrics", timeout=30).text
    assert 'adaptive_cache_bypass_total{category="' in metrics and 'reason="embed-deadline"' in metrics
    assert "adaptive_embedding_deadline_misses_total 1.0" in metrics
    again = httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30)
    assert again.headers["x-cache"] == "MISS"  # the encoder is back: the cache is used again


async def test_a_cancelled_request_s_query_is_not_encoded(encoder):
    slow = SlowEncoder(encoder)
    batcher = EmbedBatcher(slow, max_batch=1, deadline_s=5.0, workers=1)
    first = asyncio.create_task(batcher.embed("first"))
    gone = asyncio.create_task(batcher.embed("client went away"))
    await asyncio.sleep(0.1)
    gone.cancel()  # e.g. the client disconnected while its query waited
    await asyncio.sleep(0)
    slow.release.set()
    assert await first is not None
    assert await batcher.embed("next") is not None
    await batcher.close()
    assert slow.texts == ["first", "next"]
