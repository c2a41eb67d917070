"""Redis hung (SIGSTOP: it accepts connections and never answers, as in a partition) or gone:
the controller keeps answering without waiting for it, says so on /metrics, and brings the cache
back by itself once Redis answers again. Real redis-server, real HTTP, simulated backend."""

from __future__ import annotations

import os
import signal
import time

import httpx
import pytest

from controller.redis_server import EmbeddedRedis


def ask(url, content):
    return httpx.post(url + "/v1/chat/completions", timeout=30, json={
        "model": "m", "temperature": 0, "messages": [{"role": "user", "content": content}]})


def metric(url, name):
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


@pytest.fixture
def own_redis(tmp_path):
    server = EmbeddedRedis(tmp_path / "redis").start()
    yield server
    if server._proc is not None:
        os.kill(server._proc.pid, signal.SIGCONT)
    server.stop()


@pytest.mark.parametrize("fault", ["hung", "killed"])
def test_breaker_opens_fails_fast_and_recovers(own_redis, sim_backend, encoder, policies_path, fault):
    from tests.conftest import ControllerHandle

    ctl = ControllerHandle(policies_path, [sim_backend], own_redis.url, encoder)
    try:
        assert ask(ctl.url, "Who wrote War and Peace?").headers["x-cache"] == "MISS"
        assert ask(ctl.url, "Who wrote War and Peace?").headers["x-cache"] == "HIT"
        if fault == "hung":
            os.kill(own_redis._proc.pid, signal.SIGSTOP)
        else:
            own_redis.stop()
        t0 = time.monotonic()
        replies = [ask(ctl.url, q) for q in ["Who wrote War and Peace?"] + [f"Who wrote book number {i}?" for i in range(10)]]
        elapsed = time.monotonic() - t0
        assert all(r.status_code == 200 for r in replies)
        assert replies[0].headers["x-cache"] == "MISS"  # the document could not be read: served fresh
        assert metric(ctl.url, "adaptive_redis_breaker_open") == 1.0
        # Most did not even try (a slow machine may pass the 1 s cooldown: then one more probe).
        assert metric(ctl.url, "adaptive_redis_fast_failures") >= 5
        assert elapsed < 11 * 2.0 / 2  # without the breaker each request waited >= 2 s for Redis
        if fault == "hung":
            os.kill(own_redis._proc.pid, signal.SIGCONT)
        else:
            own_redis.start()
        deadline = time.monotonic() + 30
        while metric(ctl.url, "adaptive_redis_breaker_open") == 1.0 and time.monotonic() < deadline:
            ask(ctl.url, "Who wrote Anna Karenina?")  # traffic carries the half-open probes
            time.sleep(0.2)
        assert metric(ctl.url, "adaptive_redis_breaker_open") == 0.0
        ask(ctl.url, "Who wrote Crime and Punishment?")
        assert ask(ctl.url, "Who wrote Crime and Punishment?").headers["x-cache"] == "HIT"  # cache back
    finally:
        ctl.stop()
