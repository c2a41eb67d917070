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


def test_no_orphan_when_the_owner_is_killed(tmp_path):
    """Even a SIGKILLed controller takes its embedded Redis with it (PR_SET_PDEATHSIG)."""
    import subprocess
    import sys
    import time

    owner = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from controller.redis_server import EmbeddedRedis; "
        f"r = EmbeddedRedis({str(tmp_path)!r}).start(); print(r.port, flush=True); time.sleep(600)")],
        stdout=subprocess.PIPE, text=True)
    port = int(owner.stdout.readline())
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    assert client.ping()
    owner.kill()
    owner.wait()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            time.sleep(0.1)
        except redis.ConnectionError:
            return
    raise AssertionError("embedded redis-server outlived its owner")


def test_exits_on_sigterm_when_its_data_dir_is_gone(tmp_path):
    """A Redis whose data directory was removed under it cannot write its final snapshot; it must
    still exit on SIGTERM (by default Redis refuses to, and stays up as an orphan)."""
    import shutil
    import signal
    import subprocess

    server = EmbeddedRedis(tmp_path / "redis").start()
    try:
        redis.Redis.from_url(server.url).set("va:doc:x", "unsaved")
        shutil.rmtree(tmp_path / "redis")
        server._proc.send_signal(signal.SIGTERM)
        try:
            server._proc.wait(10)
        except subprocess.TimeoutExpired:
            raise AssertionError("redis-server ignored SIGTERM after its data dir went") from None
    finally:
        server.stop()
