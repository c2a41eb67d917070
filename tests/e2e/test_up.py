"""`adaptive-controller up`, what `make run` starts: vLLM with the plugin on SmolLM2, the
controller and an embedded Redis, then Ctrl-C stops all three. Real processes, real HTTP."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import httpx
import pytest

from controller.procs import free_port, wait_http

pytestmark = pytest.mark.engine


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_up_serves_through_the_cache_and_ctrl_c_stops_everything(smollm2_dir, tmp_path):
    port, vllm_port, redis_port = free_port(), free_port(), free_port()
    log = tmp_path / "up.log"
    with open(log, "w") as sink:
        up = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "up", "--model", str(smollm2_dir), "--port", str(port),
             "--vllm-port", str(vllm_port), "--redis-port", str(redis_port), "--data-dir", str(tmp_path / "data"),
             "--vllm-log", str(tmp_path / "vllm.log")],
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True)  # its own group, as in a terminal
    try:
        assert wait_http(f"http://127.0.0.1:{port}/health", up, 600), log.read_text()[-3000:]
        body = {"model": "smollm2", "temperature": 0, "max_tokens": 16,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}
        first = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
        assert first.status_code == 200 and first.headers["x-cache"] == "MISS", first.text
        body["messages"][0]["content"] = "Hi! what is the capital of Frnace?"  # a repeat, below the threshold
        again = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=body, timeout=120)
        assert again.headers["x-cache"] == "HIT" and again.json()["choices"] == first.json()["choices"]
        deadline = time.monotonic() + 30
        while "[up] controller ready" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.5)  # printed by a watcher thread once /health answers
        assert f"[up] controller ready: http://127.0.0.1:{port}/v1" in log.read_text()
        assert listening(vllm_port) and listening(redis_port)
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's foreground group
        up.wait(120)  # exits as Ctrl-C ends a program (SIGINT), after its clean-up
        assert not listening(port) and not listening(vllm_port) and not listening(redis_port)
    finally:
        if up.poll() is None:
            os.killpg(up.pid, signal.SIGKILL)
