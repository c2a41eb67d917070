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


@pytest.fixture
def policy_copy(tmp_path, policies_path) -> Path:
    """A private copy of the example policies that a test may rewrite and reload; the classifier
    weights it names (relative to the file) are copied beside it."""
    shutil.copy(policies_path.parent / "classifier.npz", tmp_path / "classifier.npz")
    path = tmp_path / "policies.yaml"
    path.write_text(policies_path.read_text())
    return path


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

    def wait_first_scrape(self, timeout: float = 30.0) -> None:
        """Wait for the load monitor's first round (it sets the load level: a test that sets the
        level itself must do so after it)."""
        import time

        deadline = time.monotonic() + timeout
        while self.ctl.load.rounds == 0:
            if time.monotonic() > deadline:
                raise TimeoutError("the load monitor did not run")
            time.sleep(0.05)


@pytest.fixture
def start_controller(redis_server, encoder, policies_path):
    """Start controllers on the test Redis; all are stopped after the test.

    The embedding deadline defaults to 10 s here, not the served 0.1 s: on 2 cores shared with a
    vLLM engine a query can miss 0.1 s, turn into a cache bypass in the default category, and fail
    a test about classification, caching or profiles by timing. The deadline itself is tested with
    its own setting (test_embed_batch)."""
    handles = []

    def start(backends, config_path=policies_path, encoder_=None, **settings):
        settings.setdefault("embed_deadline", 10.0)
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


class LocalRedisCluster:
    """A real Redis Cluster on loopback: 3 masters + 3 replicas of Debian's redis-server, created
    with `redis-cli --cluster create`; node timeout 1 s so a killed master fails over quickly, and
    `cluster-require-full-coverage no` (as a cache's cluster should run) so the other shards keep
    answering meanwhile. It is ready only once every replica has synced: a replica that never
    synced refuses to take over, and a master killed in its first seconds was never replaced."""

    def __init__(self, folder: Path, masters: int = 3) -> None:
        import subprocess

        from controller.procs import free_port

        self.ports: list[int] = []
        while len(self.ports) < 2 * masters:  # each node also listens on port + 10000 (cluster bus)
            port = free_port()
            if port < 55000 and port not in self.ports:
                self.ports.append(port)
        self.procs = {}
        for port in self.ports:
            node = folder / str(port)
            node.mkdir(parents=True)
            self.procs[port] = subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--cluster-node-timeout", "1000",
                 "--cluster-require-full-coverage", "no",  # other shards serve while one fails over
                 "--repl-diskless-sync-delay", "0",  # replicas sync at once (a never-synced one never takes over)
                 "--dir", str(node), "--appendonly", "no", "--save", "", "--logfile", str(node / "redis.log")],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for port in self.ports:
                self._wait(lambda p=port: self.cli(p, "ping") == "PONG")
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in self.ports],
                            "--cluster-replicas", "1", "--cluster-yes"], check=True, capture_output=True, timeout=60)
            self._wait(lambda: all("cluster_state:ok" in self.cli(p, "cluster", "info") for p in self.ports))
            self._wait(lambda: all("role:master" in info or "master_link_status:up" in info
                                   for info in (self.cli(p, "info", "replication") for p in self.ports)))
        except BaseException:
            self.stop()  # leave no server behind
            raise

    @staticmethod
    def cli(port: int, *args: str) -> str:
        import subprocess

        out = subprocess.run(["redis-cli", "-p", str(port), *args], capture_output=True, text=True, timeout=10)
        return out.stdout.strip()

    @staticmethod
    def _wait(check, timeout: float = 30.0) -> None:
        import time

        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError("redis cluster did not come up")
            time.sleep(0.1)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def master_of(self, key: str) -> int | None:
        """The port of the master that holds `key`'s slot now, as a live node sees it (None while
        the slot's master is failing and no replica has taken it over yet)."""
        node = next(p for p in self.ports if self.procs[p].poll() is None)
        slot = int(self.cli(node, "cluster", "keyslot", key))
        for line in self.cli(node, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" in parts[2] and "fail" not in parts[2]:
                for span in parts[8:]:
                    lo, _, hi = span.partition("-")
                    if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                        return int(parts[1].split(":")[1].split("@")[0])
        return None

    def kill(self, port: int) -> None:
        self.procs[port].kill()
        self.procs[port].wait()

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(10)


@pytest.fixture
def redis_cluster(tmp_path):
    """A fresh 6-node Redis Cluster for one test (tests may kill its nodes)."""
    cluster = LocalRedisCluster(tmp_path / "cluster")
    yield cluster
    cluster.stop()
