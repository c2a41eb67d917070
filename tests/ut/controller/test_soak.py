"""A 30-second soak of one controller process (embedded Redis) in front of the simulated backend:
no errors, and its memory and file descriptors stay flat (bench.fleet runs the 10-minute one)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bench.fleet import Stack, soak_run


def test_thirty_second_soak_has_no_errors_and_no_leaks(tmp_path: Path):
    stack = Stack(service_ms=4.0, workdir=tmp_path)
    try:
        asyncio.run(soak_run(stack.url, stack.controller.pid, rate=20, seconds=5, hit_ratio=0.3, every=5))  # warm up
        out = asyncio.run(soak_run(stack.url, stack.controller.pid, rate=20, seconds=30, hit_ratio=0.3, every=10))
    finally:
        stack.stop()
    assert out["sent"] == 600 and out["errors"] == 0
    first, last = out["samples"][0], out["samples"][-1]
    assert last["fds"] <= first["fds"] + 8  # no leaked sockets or files
    assert last["rss_mib"] <= first["rss_mib"] + 64  # 600 small entries, bounded by the quotas
