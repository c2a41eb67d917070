"""The embedded redis-server keeps its data across a restart (persistence is on)."""

from __future__ import annotations

import redis

from controller.redis_server import EmbeddedRedis


def test_data_survives_restart(tmp_path):
    with EmbeddedRedis(tmp_path) as server:
        redis.Redis.from_url(server.url).set("va:doc:x", "kept")
        port = server.port
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert redis.Redis.from_url(server.url).get("va:doc:x") == b"kept"
