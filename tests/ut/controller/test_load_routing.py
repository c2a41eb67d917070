"""vLLM metrics parsing and load-aware routing (pure parts; the scrape itself is e2e)."""

from __future__ import annotations

import time

from controller.backends import BackendPool
from controller.load_monitor import parse_vllm_metrics
from policies.schema import LoadPolicy

VLLM_METRICS = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="smollm2"} 3.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="smollm2"} 7.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage (deprecated name).
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="smollm2"} 0.25
"""


def test_parse_vllm_metrics_including_deprecated_kv_name():
    assert parse_vllm_metrics(VLLM_METRICS) == {"running": 3.0, "waiting": 7.0, "kv_usage": 0.25}


def test_routing_prefers_low_load_and_avoids_saturated_dead_and_silent_backends():
    policy = LoadPolicy()
    pool = BackendPool(["http://a", "http://b", "http://c"])
    a, b, c = pool.backends
    a.waiting, b.waiting, c.waiting = 10, 0, 2
    assert [x.url for x in pool.order(policy)] == ["http://b", "http://c", "http://a"]
    pool.failed(b)  # dead: last, whatever its gauges say
    assert pool.order(policy)[-1] is b
    pool.succeeded(b)
    b.scraped_at = time.monotonic() - policy.stale_after_seconds - 1  # silent: counts as saturated
    assert pool.order(policy)[-1] is b
    c.in_flight = 50  # our own open requests count before the next scrape shows them
    assert pool.order(policy)[0] is a
