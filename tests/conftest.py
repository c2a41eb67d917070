"""Shared fixtures: a real redis-server per session, real model folders, real vLLM engines."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    """A real redis-server on a free port, for the whole test session."""
    from controller.redis_server import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
async def redis_client(redis_server):
    """An async client on a flushed database (tests don't see each other's keys)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    await client.flushdb()
    yield client
    await client.aclose()


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct (real weights) as an HF folder; built offline once."""
    from vllm_adaptive import model_store

    return model_store.ensure()


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory, smollm2_dir) -> Path:
    """A random-weight 2-layer Llama for plumbing tests (SmolLM2's tokenizer, head size 32)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = tmp_path_factory.mktemp("tiny-llama")
    config = LlamaConfig(
        vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
        tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (smollm2_dir / name).exists():
            shutil.copy(smollm2_dir / name, out / name)
    return out


@pytest.fixture(scope="session")
def encoder():
    """The hot-path sentence encoder (int8 ONNX all-MiniLM-L6-v2)."""
    from controller import embeddings

    return embeddings.load()


@pytest.fixture(scope="session")
def policies_path() -> Path:
    return REPO / "configs" / "policies.yaml"


class ServedApp:
    """An ASGI app served by uvicorn on a free port in a background thread (real HTTP)."""

    def __init__(self, app) -> None:
        import uvicorn

        from controller.procs import free_port, wait_http

        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        if not wait_http(self.url + "/health", None, 60):
            raise TimeoutError(self.url)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(30)


class ControllerHandle(ServedApp):
    """A controller (the real app) in front of `backends`, on the test Redis."""

    def __init__(self, config_path: Path, backends: list[str], redis_url: str, encoder, admin_token="t0k",
                 **settings) -> None:
        from controller.app import create_app
        from controller.service import Settings

        self.admin_token = admin_token
        super().__init__(create_app(Settings(config_path, backends, redis_url, admin_token, **settings), encoder))

    @property
    def ctl(self):
        """The running controller (policy snapshot, load level, cache)."""
        return self.app.state.ctl


@pytest.fixture
def start_controller(redis_server, encoder, policies_path):
    """Start controllers on the test Redis; all are stopped after the test."""
    handles = []

    def start(backends, config_path=policies_path, encoder_=None, **settings):
        handle = ControllerHandle(config_path, backends, redis_server.url, encoder_ or encoder, **settings)
        handles.append(handle)
        return handle

    yield start
    for handle in handles:
        handle.stop()


@pytest.fixture(scope="session")
def sim_backend():
    """bench.sim_backend (vLLM's wire format, answers echo the question) served over real HTTP:
    the request path is tested without a vLLM engine. It stands in for a GPU fleet."""
    from bench.sim_backend import build

    served = ServedApp(build(slots=16, service_seconds=0.0))
    yield served.url
    served.stop()
