"""Two-stage lookup: top-k candidates from the index, a verifier accepts at most one.
Real redis-server, real MiniLM encoder."""

from __future__ import annotations

import pytest

from controller.cache import SemanticCache
from policies.schema import VerifierSetting, parse_policies
from tests.ut.controller.test_verify import CASES, REPEATS

CONFIG = """\
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.5, ttl_seconds: 60, max_entries: 100}
"""
ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x"}, "finish_reason": "stop"}]}
GUARDS = VerifierSetting(name="guards", top_k=4)


@pytest.fixture
def cache(redis_client, encoder):
    return SemanticCache(redis_client, parse_policies(CONFIG, "t.yaml"), encoder.dim)


async def put(cache, encoder, text, partition="p"):
    return await cache.store("qa", partition, "t", encoder.encode([text])[0], text, ANSWER, 60, {})


@pytest.mark.parametrize("guard,stored,negative,positive", CASES)
async def test_guard_turns_a_similar_different_question_into_a_miss(cache, encoder, guard, stored, negative, positive):
    await put(cache, encoder, stored)
    v_neg, v_pos, v_stored = encoder.encode([negative, positive, stored])
    sim_neg, sim_pos = float(v_neg @ v_stored), float(v_pos @ v_stored)
    threshold = min(sim_neg, sim_pos) - 0.01  # both are candidates: the verifier decides
    assert sim_neg > 0.6, "the edit should look similar to the encoder, or the case tests nothing"
    assert await cache.lookup("qa", "p", v_neg, threshold) is not None  # cosine alone: a wrong hit
    assert await cache.lookup("qa", "p", v_neg, threshold, query=negative, verifier=GUARDS) is None
    hit = await cache.lookup("qa", "p", v_pos, threshold, query=positive, verifier=GUARDS)
    assert hit is not None and hit.similarity == pytest.approx(sim_pos, abs=1e-3)
    assert cache.rejections == {"qa": 1}


async def test_verifier_picks_the_right_candidate_among_top_k(cache, encoder):
    """The nearest entry is a different question; the second one is the same question."""
    right = await put(cache, encoder, "What is the capital of Austria?")
    await put(cache, encoder, "What is the capital of Australia?")
    query = "What is the capital city of Austria?"
    v = encoder.encode([query])[0]
    nearest = await cache.lookup("qa", "p", v, 0.5)
    hit = await cache.lookup("qa", "p", v, 0.5, query=query, verifier=GUARDS)
    assert hit is not None and hit.key == right
    if nearest.key != right:  # the encoder ranks the wrong one first: top-1 verification misses
        assert await cache.lookup("qa", "p", v, 0.5, query=query, verifier=GUARDS.model_copy(update={"top_k": 1})) is None


async def test_fewer_live_entries_than_top_k_in_the_partition(cache, encoder):
    await put(cache, encoder, "How many legs does a spider have?", partition="other")
    key = await put(cache, encoder, "How many legs does a spider have?")
    q = "how many legs does a spider have"
    hit = await cache.lookup("qa", "p", encoder.encode([q])[0], 0.8, query=q, verifier=GUARDS.model_copy(update={"top_k": 16}))
    assert hit is not None and hit.key == key


async def test_rebuild_restores_the_stored_question(redis_client, encoder):
    config = parse_policies(CONFIG, "t.yaml")
    first = SemanticCache(redis_client, config, encoder.dim)
    await put(first, encoder, "Is it safe to take ibuprofen with alcohol?")
    second = SemanticCache(redis_client, config, encoder.dim)
    assert await second.rebuild() == 1
    (entry,) = second.indexes["qa"].entries.values()
    assert entry.query == "Is it safe to take ibuprofen with alcohol?"
    negative = "Is it safe to take ibuprofen without alcohol?"
    assert await second.lookup("qa", "p", encoder.encode([negative])[0], 0.5, query=negative, verifier=GUARDS) is None


@pytest.mark.parametrize("stored,query", REPEATS)
async def test_a_repeat_below_the_threshold_is_served(cache, encoder, stored, query):
    """The verified cache serves a re-typed question even where its cosine is under the threshold;
    a plain one-stage lookup of the same vector at the same threshold only if the cosine allows."""
    key = await put(cache, encoder, stored)
    await put(cache, encoder, "How do I bake sourdough bread at home?")
    v, v_stored = encoder.encode([query, stored])
    threshold = min(0.999, float(v @ v_stored) + 0.001)  # just above the repeat's own cosine
    hit = await cache.lookup("qa", "p", v, threshold, query=query, verifier=GUARDS)
    assert hit is not None and hit.key == key
    other = "Why is the ocean salty?"
    assert await cache.lookup("qa", "p", encoder.encode([other])[0], 0.999, query=other, verifier=GUARDS) is None
