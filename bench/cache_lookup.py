"""Lookup cost of the semantic cache with a real redis-server at 1k / 10k / 100k entries.

    python -m bench.cache_lookup [--sizes 1000,10000,100000] [--queries 2000]

Entries are real all-MiniLM-L6-v2 embeddings of distinct QQP questions (bulk-encoded with the
fp32 reference; queries with embedding included use the int8 ONNX hot-path encoder).
Miss path: in-memory HNSW search of a question that is not cached (no Redis round-trip).
Hit path: search of a cached question + one pipelined Redis round-trip (answer + hit count).
Both are timed without and with the query's embedding. Verified hit path (`--verifier`,
default guarded_learned): top-4 candidates from the index, the verifier compares the query's
text with each candidate's stored question, then the Redis round-trip; timed with the
embedding (the added latency of a hit). Writes cache_lookup.json/.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import redis.asyncio as aioredis

from bench import data, plotting
from bench.machine import cpu_flags
from controller import embeddings
from controller.cache import SemanticCache
from controller.redis_server import EmbeddedRedis
from policies.schema import PolicyConfig, VerifierSetting, parse_policies

ANSWER = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "x" * 400}, "finish_reason": "stop"}]}


def questions(n: int) -> list[str]:
    seen: dict[str, None] = {}
    for pair in data.qqp_pairs():
        for q in (pair["a"], pair["b"]):
            seen.setdefault(q.strip(), None)
        if len(seen) >= n:
            break
    return list(seen)[:n]


def pct(xs: list[float]) -> dict[str, float]:
    arr = np.array(xs) * 1000
    return {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)), "mean_ms": float(arr.mean())}


def qa_policy(max_entries: int) -> PolicyConfig:
    """One category, "qa", holding up to `max_entries` (the cache under test in the lookup benches)."""
    return parse_policies(
        f"default_category: qa\ncategories:\n  - name: qa\n    policy: "
        f"{{similarity_threshold: 0.9, ttl_seconds: 3600, max_entries: {max_entries}}}\n", "bench")


def qqp_vectors(n: int, out: Path) -> tuple[list[str], np.ndarray]:
    """n distinct QQP questions and their MiniLM vectors, kept in `out` (bulk-encoded with the fp32
    reference: 2x faster batched, the same vectors as the int8 hot path to ~1e-3)."""
    texts = questions(n)
    cache_file = out / f"qqp_vectors_{len(texts)}.npy"
    if cache_file.exists():
        return texts, np.load(cache_file)
    vecs = embeddings.encode_many(embeddings.load("minilm-fp32-torch"), texts)
    np.save(cache_file, vecs)
    return texts, vecs


async def run_size(url: str, size: int, vecs: np.ndarray, texts: list[str], probe: np.ndarray,
                   probe_texts: list[str], encoder, n_queries: int, verifier: VerifierSetting) -> dict:
    config = qa_policy(size)
    client = aioredis.Redis.from_url(url)
    await client.flushdb()
    cache = SemanticCache(client, config, vecs.shape[1])
    t0 = time.perf_counter()
    for i in range(size):
        await cache.store("qa", "p", "t", vecs[i], texts[i], ANSWER, 3600, {})
    fill_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    miss_t, hit_t, miss_e, hit_e, hit_v = [], [], [], [], []
    misses = hits = verified = 0
    for q in range(n_queries):
        j = int(rng.integers(len(probe)))
        t0 = time.perf_counter()
        res = await cache.lookup("qa", "p", probe[j], 1.01)  # above any similarity: always a miss
        miss_t.append(time.perf_counter() - t0)
        misses += res is None
        i = int(rng.integers(size))
        t0 = time.perf_counter()
        res = await cache.lookup("qa", "p", vecs[i], 0.5)
        hit_t.append(time.perf_counter() - t0)
        hits += res is not None
        if q < n_queries // 4:  # embedding included, on fewer queries (encoding dominates)
            t0 = time.perf_counter()
            await cache.lookup("qa", "p", encoder.encode([probe_texts[j]])[0], 1.01)
            miss_e.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            await cache.lookup("qa", "p", encoder.encode([texts[i]])[0], 0.5)
            hit_e.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            res = await cache.lookup("qa", "p", encoder.encode([texts[i]])[0], 0.5, query=texts[i], verifier=verifier)
            hit_v.append(time.perf_counter() - t0)
            verified += res is not None
    info = await client.info("memory")
    await client.aclose()
    return {"entries": size, "fill_seconds": fill_s, "miss_rate_check": misses / n_queries,
            "hit_rate_check": hits / n_queries, "miss": pct(miss_t), "hit": pct(hit_t),
            "miss_with_embedding": pct(miss_e), "hit_with_embedding": pct(hit_e),
            "verified_hit_with_embedding": pct(hit_v), "verified_hit_rate_check": verified / len(hit_v),
            "verifier": verifier.model_dump(),
            "redis_used_memory_mb": info["used_memory"] / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--verifier", default="guarded_learned", help="verifier of the verified hit path")
    parser.add_argument("--top-k", type=int, default=4)
    args = parser.parse_args()
    verifier = VerifierSetting(name=args.verifier, top_k=args.top_k, min_score=0.0)
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    encoder = embeddings.load()
    texts, vecs = qqp_vectors(max(sizes) + 2000, out)
    stored, probe = vecs[:-2000], vecs[-2000:]
    results = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp)) as server:
        for size in sizes:
            row = asyncio.run(run_size(server.url, size, stored, texts, probe, texts[-2000:], encoder, args.queries, verifier))
            print(json.dumps(row))
            results.append(row)
    (out / "cache_lookup.json").write_text(json.dumps({"encoder": encoder.name, "cpu_count": os.cpu_count(),
                                                       "cpu_flags": cpu_flags(), "results": results}, indent=1))
    plot(results, out / "cache_lookup.png")


def plot(results: list[dict], path: Path) -> None:
    fig, ax = plotting.subplots(figsize=(7, 4.5))
    xs = [r["entries"] for r in results]
    for key in ("miss", "hit", "miss_with_embedding", "hit_with_embedding", "verified_hit_with_embedding"):
        ax.plot(xs, [r[key]["p50_ms"] for r in results], "o-", label=f"{key} p50")
        ax.plot(xs, [r[key]["p99_ms"] for r in results], "x--", label=f"{key} p99")
    ax.axhline(2, color="grey", lw=0.8)
    ax.axhline(3, color="grey", lw=0.8, ls=":")
    ax.set(xscale="log", xlabel="entries in the category", ylabel="ms", title="semantic cache lookup, real Redis")
    plotting.save(fig, path, [ax])


if __name__ == "__main__":
    main()
