"""Micro-batched query embeddings (controller.embed_batch) vs one encode per query.

    python -m bench.embed_batching [--concurrency 1,4,16,64] [--seconds 8] [--encoder minilm-int8-onnx]

N clients each embed QQP questions one after another for a fixed time, (a) each query encoded on
its own in asyncio's thread pool — the controller before micro-batching — and (b) through the
controller's EmbedBatcher (max batch 32; the deadline set out of the way to time every query).
Per N: queries/s, per-query latency p50 / p99 (queue wait included), the mean batch and the share
of queries over the controller's default 100 ms deadline (those would be served as misses).
Writes embed_batching.json and .png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
from pathlib import Path

import numpy as np

from bench import data, plotting
from bench.machine import describe
from controller import embeddings
from controller.embed_batch import EmbedBatcher
from controller.service import Settings

DEADLINE_MS = Settings.embed_deadline * 1e3  # the controller's default


async def drive(embed, questions: list[str], clients: int, seconds: float) -> list[float]:
    """Per-query seconds of `clients` loops each embedding the next question until time is up."""
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def client(k: int) -> None:
        i = k
        while time.perf_counter() < stop:
            t = time.perf_counter()
            await embed(questions[i % len(questions)])
            latencies.append(time.perf_counter() - t)
            i += clients

    await asyncio.gather(*(client(k) for k in range(clients)))
    return latencies


async def measure(encoder: embeddings.Encoder, questions: list[str], clients: int, seconds: float,
                  workers: int) -> dict:
    async def alone(text: str) -> np.ndarray:
        return (await asyncio.to_thread(encoder.encode, [text]))[0]

    batches: list[int] = []
    batcher = EmbedBatcher(encoder, max_batch=32, deadline_s=600.0, workers=workers, on_batch=batches.append)
    out = {}
    for mode, embed in (("one encode per query", alone), ("micro-batched", batcher.embed)):
        batches.clear()
        lat = np.array(await drive(embed, questions, clients, seconds)) * 1e3
        out[mode] = {"queries_per_s": len(lat) / seconds, "p50_ms": float(np.percentile(lat, 50)),
                     "p99_ms": float(np.percentile(lat, 99)), "over_deadline": float((lat > DEADLINE_MS).mean()),
                     "mean_batch": float(np.mean(batches)) if batches else 1.0}
    await batcher.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16,64")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--encoder", default=embeddings.OnnxMiniLM.name, choices=list(embeddings.ENCODERS))
    parser.add_argument("--workers", type=int, default=Settings.embed_workers,
                        help="the batcher's encoder threads (default: the controller's, %(default)s)")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    questions = [q for pair in data.qqp_pairs(limit=500, seed=2) for q in (pair["a"], pair["b"])]
    encoder = embeddings.load(args.encoder)
    encoder.encode(questions[:32])  # warm-up
    results: dict = {"machine": describe(), "encoder": args.encoder, "seconds": args.seconds,
                     "deadline_ms": DEADLINE_MS, "workers": args.workers, "thread_pool": min(32, (os.cpu_count() or 1) + 4), "runs": {}}
    for clients in (int(c) for c in args.concurrency.split(",")):
        results["runs"][str(clients)] = row = asyncio.run(measure(encoder, questions, clients, args.seconds,
                                                                          args.workers))
        print(clients, json.dumps(row), flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "embed_batching.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "embed_batching.png")


def plot(results: dict, path: Path) -> None:
    fig, axes = plotting.subplots(1, 2, figsize=(11, 4.2))
    clients = [int(c) for c in results["runs"]]
    for mode in ("one encode per query", "micro-batched"):
        rows = [results["runs"][str(c)][mode] for c in clients]
        axes[0].plot(clients, [r["queries_per_s"] for r in rows], marker="o", label=mode)
        axes[1].plot(clients, [r["p99_ms"] for r in rows], marker="o", label=f"{mode} p99")
        axes[1].plot(clients, [r["p50_ms"] for r in rows], marker="x", linestyle="--", label=f"{mode} p50")
    axes[1].axhline(results["deadline_ms"], color="grey", linewidth=0.8, label="default deadline")
    axes[0].set(xscale="log", xlabel="concurrent clients", ylabel="queries embedded per second",
                title=f"throughput ({results['encoder']})")
    axes[1].set(xscale="log", yscale="log", xlabel="concurrent clients", ylabel="ms per query (queue included)",
                title="latency")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=7)
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
