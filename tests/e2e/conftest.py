"""End-to-end fixtures: a real `vllm-adaptive serve` on SmolLM2 and a real controller over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from controller.redis_server import free_port


def wait_ready(url: str, proc: subprocess.Popen | None = None, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError(url)


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    """`vllm-adaptive serve SmolLM2 --plugin adaptive` (the OpenAI server, multi-process)."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm_adaptive.cli", "serve", str(smollm2_dir), "--plugin", "adaptive",
           "--host", "127.0.0.1", "--port", str(port), "--enforce-eager", "--max-model-len", "1024",
           "--served-model-name", "smollm2"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health", proc)
    except Exception:
        os.killpg(proc.pid, signal.SIGKILL)
        raise RuntimeError(Path(log).read_text()[-4000:])
    yield url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


class ControllerHandle:
    """A controller served by uvicorn on a free port in a background thread."""

    def __init__(self, config_path: Path, backends: list[str], redis_url: str, encoder, admin_token="t0k"):
        import uvicorn

        from controller.app import Settings, create_app

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_token = admin_token
        self.app = create_app(Settings(config_path, backends, redis_url, admin_token), encoder)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_ready(self.url + "/health", timeout=60)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


@pytest.fixture
def start_controller(redis_server, encoder, policies_path):
    handles = []

    def start(backends, config_path=policies_path):
        handle = ControllerHandle(config_path, backends, redis_server.url, encoder)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()
