"""This project's semantic cache side by side with what users would run instead: RedisVL's
SemanticCache and GPTCache (bench.anchors), same encoder, same data, same machine, one run.

    python -m bench.cache_compare [--sizes 1000,10000,100000] [--queries 2000]

* Lookup overhead at each size (QQP questions, real all-MiniLM-L6-v2 vectors, as bench.cache_lookup):
  a miss (a question never stored) and a hit (a stored one), p50/p99, embedding excluded (every
  system gets the same precomputed vectors), and with it (the int8 ONNX encoder's measured time
  added: it is the same for every system).
* Memory per entry count: Redis `used_memory` growth (this project, RedisVL) and the process's own
  growth (this project's in-memory HNSW index; GPTCache's hnswlib + sqlite, with its files).
* Quality on the held-back hard-negative pairs (bench.hard_negatives; never used to choose a
  setting): hit rate on paraphrases / near-repeats and false-hit rate, at bounds of 1 % and 5 %
  false hits chosen on the training pairs. RedisVL and GPTCache decide a hit by one distance
  threshold on these same vectors (cosine distance; GPTCache's L2 score of unit vectors is
  monotone in cosine), so their best global threshold is computed from the cosine similarities
  (bench.verified_cache.global_threshold); this project with its per-category verified
  operating points (calibrate-cache's rule).
* Tenant isolation: tenant A's answer asked for by tenant B, with the isolation each system offers
  (this project: the tenant is part of the cache partition; RedisVL: a tag filter the caller must
  pass; GPTCache: none) and as used by default.
* Break-even hit rate behind a backend that takes 200 ms: the hit rate above which the cache
  saves latency on average, from the measured miss overhead and hit latency (10k entries, with
  embedding): p = miss / (200 ms - hit + miss).

Writes cache_compare.json and cache_compare.png.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import anchors, plotting
from bench.cache_lookup import ANSWER, pct, qa_policy, qqp_vectors
from bench.machine import describe
from bench.verified_cache import accepted, global_threshold, load_splits, operating_points, report

BACKEND_SECONDS = 0.2
BOUNDS = (0.01, 0.05)


async def ours(url: str, texts: list[str], vecs: np.ndarray, probes: np.ndarray, size: int, queries: int) -> dict:
    """This project's cache (in-memory HNSW per category + documents in Redis), as bench.anchors
    measures the others: fill, then misses and hits, embedding excluded."""
    import redis.asyncio as aioredis

    from controller.cache import SemanticCache

    config = qa_policy(size)
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    gc.collect()
    base_redis, base_rss = (await client.info("memory"))["used_memory"], anchors.rss_bytes()
    cache = SemanticCache(client, config, vecs.shape[1])
    t0 = time.perf_counter()
    for i in range(size):
        await cache.store("qa", "p", "t", vecs[i], texts[i], ANSWER, 3600, {})
    fill = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    miss, hit, wrong = [], [], 0
    for _ in range(queries):
        j, i = int(rng.integers(len(probes))), int(rng.integers(size))
        t0 = time.perf_counter()
        wrong += await cache.lookup("qa", "p", probes[j], 0.9999) is not None
        miss.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        wrong += await cache.lookup("qa", "p", vecs[i], 0.5) is None
        hit.append(time.perf_counter() - t0)
    used = (await client.info("memory"))["used_memory"]
    await client.aclose()
    return {"entries": size, "fill_seconds": fill, "miss": pct(miss), "hit": pct(hit), "unexpected_outcomes": wrong,
            "redis_mb": (used - base_redis) / 2**20, "process_rss_mb": (anchors.rss_bytes() - base_rss) / 2**20}


async def our_tenants(url: str, vec: np.ndarray) -> dict[str, bool]:
    """Tenant A's answer asked for by tenant B through the controller's own partition rule."""
    import redis.asyncio as aioredis

    from controller.cache import SemanticCache
    from controller.keys import cache_key

    config = qa_policy(16)
    client = aioredis.Redis.from_url(url)
    await client.flushall()
    cache = SemanticCache(client, config, vec.shape[0])
    body = {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": "What is the balance of my account?"}]}
    a, b = (cache_key("chat", body, {"authorization": f"Bearer {k}"}, config.tenant_header, config.history_window)
            for k in ("sk-tenant-a", "sk-tenant-b"))
    await cache.store("qa", a.partition, a.tenant, vec, a.query, ANSWER, 3600, {})
    served = await cache.lookup("qa", b.partition, vec, 0.9) is not None
    await client.aclose()
    return {"served_to_other_tenant_default": served, "served_to_other_tenant_filtered": served}


def run_anchor(name: str, folder: Path, sizes: list[int], probes: int, queries: int) -> dict:
    spec = folder / f"{name}.json"
    spec.write_text(json.dumps({"anchor": name, "folder": str(folder), "sizes": sizes, "probes": probes,
                                "queries": queries}))
    proc = subprocess.run([str(anchors.PYTHON), "-m", "bench.anchors", "run", str(spec)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def quality(encoder) -> dict:
    """Held-back hit and false-hit rates at each bound: one global cosine threshold (RedisVL,
    GPTCache) vs this project's per-category verified operating points."""
    data = load_splits(encoder)
    out: dict = {}
    for bound in BOUNDS:
        threshold, note = global_threshold(data["train"], bound)
        points, refused = operating_points(data["train"], bound)
        glob = report(accepted(data["heldback"], lambda c: (threshold, "threshold", 1.0), verified=False),
                      data["heldback"][0])["overall"]
        ver = report(accepted(data["heldback"], lambda c: (points[c].threshold, points[c].verifier, points[c].min_score)
                              if c in points else (1.01, "threshold", 1.0), verified=True), data["heldback"][0])["overall"]
        out[str(bound)] = {
            "threshold_only": {"threshold": threshold, "note": note, "hit_rate": glob["positive_hit_rate"],
                               "false_hit_rate": glob["false_hit_rate"], "wrong_share_of_served": glob["wrong_share_of_served"]},
            "verified": {"points": {c: [p.threshold, p.verifier, p.min_score] for c, p in points.items()},
                         "refused": refused, "hit_rate": ver["positive_hit_rate"], "false_hit_rate": ver["false_hit_rate"],
                         "wrong_share_of_served": ver["wrong_share_of_served"]},
        }
    return out


def embed_seconds(encoder, texts: list[str], n: int = 300) -> dict[str, float]:
    """The hot-path encoder (int8 ONNX), one query at a time: what every system pays per lookup."""
    times = []
    for text in texts[:n]:
        t0 = time.perf_counter()
        encoder.encode([text])
        times.append(time.perf_counter() - t0)
    return pct(times)


def break_even(miss_ms: float, hit_ms: float) -> float:
    """Hit rate above which a cache lowers mean latency in front of a BACKEND_SECONDS backend."""
    backend = BACKEND_SECONDS * 1000
    return miss_ms / (backend - hit_ms + miss_ms)


def main() -> None:
    from controller import embeddings
    from controller.redis_server import EmbeddedRedis

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--probes", type=int, default=2000)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--no-quality", action="store_true",
                        help="skip the held-back quality figures (they need bench.hard_negatives' pairs encoded)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print("[cache_compare] anchors' venv:", anchors.setup(), flush=True)
    texts, vecs = qqp_vectors(max(sizes) + args.probes, out)
    result: dict = {"machine": describe(), "sizes": sizes, "queries": args.queries, "backend_seconds": BACKEND_SECONDS,
                    "systems": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "texts.json").write_text(json.dumps(texts))
        np.save(folder / "vectors.npy", vecs.astype(np.float32))
        with EmbeddedRedis(folder / "redis") as server:
            rows = []
            for size in sizes:
                rows.append(asyncio.run(ours(server.url, texts, vecs, vecs[-args.probes:], size, args.queries)))
                print("[cache_compare] this project", json.dumps(rows[-1]), flush=True)
            result["systems"]["this project"] = {"sizes": rows, "tenants": asyncio.run(our_tenants(server.url, vecs[-1]))}
        for name in ("redisvl", "gptcache"):
            print(f"[cache_compare] {name} ...", flush=True)
            result["systems"][name] = run_anchor(name, folder, sizes, args.probes, args.queries)
    encoder = embeddings.load()  # the hot-path encoder, for the embedding time and the quality figures
    result["embedding"] = embed_seconds(encoder, texts[-args.probes:])
    embed = result["embedding"]["p50_ms"]
    mid = sizes[len(sizes) // 2]
    for system in result["systems"].values():
        row = next(r for r in system["sizes"] if r["entries"] == mid)
        system["break_even_hit_rate"] = {"entries": mid, "rate": break_even(row["miss"]["p50_ms"] + embed,
                                                                            row["hit"]["p50_ms"] + embed)}
    result["quality"] = {} if args.no_quality else quality(encoder)
    (out / "cache_compare.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "cache_compare.png")
    print(json.dumps({k: {"break_even": v["break_even_hit_rate"], "tenants": v["tenants"]}
                      for k, v in result["systems"].items()}, indent=1))
    print(json.dumps(result["quality"], indent=1))


def plot(result: dict, path: Path) -> None:
    fig, axes = plotting.subplots(1, 3, figsize=(17, 4.8))
    for name, system in result["systems"].items():
        xs = [r["entries"] for r in system["sizes"]]
        for kind, marker in (("hit", "o-"), ("miss", "x--")):
            axes[0].plot(xs, [r[kind]["p50_ms"] for r in system["sizes"]], marker, label=f"{name} {kind} p50")
    axes[0].set(xscale="log", yscale="log", xlabel="entries", ylabel="ms (embedding excluded)",
                title="lookup latency")
    names = list(result["systems"])
    last = [result["systems"][n]["sizes"][-1] for n in names]
    memory = [r.get("redis_mb", 0) + max(r.get("process_rss_mb", 0), 0) + r.get("disk_mb", 0) for r in last]
    axes[1].bar(names, memory)
    axes[1].set(ylabel="MB", title=f"memory at {last[0]['entries']:,} entries (Redis + process + files)")
    bounds = list(result["quality"])  # empty with --no-quality: an empty panel
    width = 0.35
    for i, label in enumerate(("threshold_only", "verified")):
        axes[2].bar(np.arange(len(bounds)) + i * width, [result["quality"][b][label]["hit_rate"] for b in bounds], width,
                    label="RedisVL / GPTCache (one threshold)" if label == "threshold_only" else "this project (verified)")
    axes[2].set_xticks(np.arange(len(bounds)) + width / 2, [f"false hits <= {float(b):.0%}" for b in bounds])
    axes[2].set(ylabel="held-back hit rate", title="hard-negative pairs")
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
