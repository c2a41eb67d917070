"""Closed loop: mixed-category traffic through the controller at 0.5x / 1.0x / 1.3x of capacity,
with no cache, static per-category policies, and load-based policies.

    python -m bench.closed_loop [--seconds 40] [--rates 0.5,1.0,1.3]

Backend: bench/sim_backend.py (documented service-time model: 4 slots x 0.4 s = 10 req/s
capacity) - the long sweeps cannot run on the real CPU vLLM here. Trace (seeded, replayable):
50 % QQP questions (300 labelled pairs, both sides, Zipf popularity), 20 % ShareGPT first turns,
15 % HumanEval prompts, 15 % time-sensitive questions from templates (weather / prices in named
places and assets). Poisson arrivals, open loop. Policies: `configs/policies.yaml` as is
(load-based) and with every category's `load:` section removed (static).

Measured per run: requests reaching the backend, client latency p50/p99, hit rate, backend queue
over time, and false hits among served hits, judged by the simulated answer's echoed question:
same question or a labelled duplicate = correct, labelled non-duplicate = false, otherwise
unjudged (reported). Writes closed_loop.json / closed_loop.png.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench import data, plotting
from controller.redis_server import free_port
from controller.stack import stop_group, wait_http

SLOTS, SERVICE_S = 4, 0.4
CAPACITY = SLOTS / SERVICE_S
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Seoul"]
ASSETS = ["bitcoin", "gold", "Apple stock", "the euro", "oil", "silver", "Tesla stock", "ethereum"]


def build_trace(n: int, rate: float, seed: int) -> tuple[list[tuple[float, str]], set, set]:
    rng = random.Random(seed)
    pairs = data.qqp_pairs(0)
    dup = rng.sample([p for p in pairs if p["duplicate"]], 150)
    nondup = rng.sample([p for p in pairs if not p["duplicate"]], 150)
    qqp = dup + nondup
    chat = [c[:300] for c in data.sharegpt_first_turns(100)]
    code = data.humaneval_prompts()
    timely = [f"What is the weather in {c} today?" for c in CITIES] + [f"What is the price of {a} right now?" for a in ASSETS]

    def zipf(items):
        weights = [1 / (i + 1) for i in range(len(items))]
        return rng.choices(items, weights)[0]

    trace, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        kind = rng.random()
        if kind < 0.5:
            pair = zipf(qqp)
            text = pair["a"] if rng.random() < 0.5 else pair["b"]
        elif kind < 0.7:
            text = zipf(chat)
        elif kind < 0.85:
            text = zipf(code)
        else:
            text = zipf(timely)
        trace.append((t, text))
    same = lambda p: frozenset((p["a"], p["b"]))  # noqa: E731
    return trace, {same(p) for p in dup}, {same(p) for p in nondup}


def static_config(path: Path, out: Path) -> Path:
    doc = yaml.safe_load(path.read_text())
    for cat in doc["categories"]:
        cat["policy"].pop("load", None)
    out.write_text(yaml.safe_dump(doc))
    return out


async def replay(url: str, sim: str, trace, no_cache: bool, duplicates: set, non_duplicates: set) -> dict:
    headers = {"Authorization": "Bearer bench"}
    if no_cache:
        headers["Cache-Control"] = "no-cache, no-store"
    latencies, hits, judged = [], 0, {"correct": 0, "false": 0, "unjudged": 0}
    queue: list[tuple[float, float]] = []
    errors = 0
    async with httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=500)) as client:
        start = time.perf_counter()

        async def one(at: float, text: str) -> None:
            nonlocal hits, errors
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            t0 = time.perf_counter()
            try:
                reply = await client.post(url + "/v1/chat/completions", headers=headers, json={
                    "model": "sim", "temperature": 0, "max_tokens": 32,
                    "messages": [{"role": "user", "content": text}]})
            except httpx.HTTPError:
                errors += 1
                return
            latencies.append(time.perf_counter() - t0)
            if reply.status_code != 200:
                errors += 1
                return
            if reply.headers.get("x-cache") == "HIT":
                hits += 1
                served = reply.json()["choices"][0]["message"]["content"].removeprefix("ANSWER: ")
                key = frozenset((served, text))
                judged["correct" if served == text or key in duplicates else
                       "false" if key in non_duplicates else "unjudged"] += 1

        async def sample_queue() -> None:
            while True:
                try:
                    text = (await client.get(sim + "/metrics")).text
                    waiting = float(text.split("vllm:num_requests_waiting{engine=\"0\"} ")[1].split()[0])
                    queue.append((time.perf_counter() - start, waiting))
                except (httpx.HTTPError, IndexError, ValueError):
                    pass
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_queue())
        await asyncio.gather(*(one(at, text) for at, text in trace))
        sampler.cancel()
    lat = np.array(latencies) * 1000
    return {"requests": len(trace), "errors": errors, "hits": hits, "hit_rate": hits / len(trace),
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "served_hits_judged": judged,
            "false_hit_rate_judged": judged["false"] / max(1, judged["correct"] + judged["false"]),
            "queue": queue}


def run_one(mode: str, rate_x: float, trace, config: Path, dup, nondup, tmp: str) -> dict:
    sim_port, ctl_port = free_port(), free_port()
    sim = subprocess.Popen([sys.executable, "-m", "bench.sim_backend", "--port", str(sim_port), "--slots",
                            str(SLOTS), "--service-seconds", str(SERVICE_S)], start_new_session=True)
    ctl = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--config", str(config), "--backend",
                            f"http://127.0.0.1:{sim_port}", "--port", str(ctl_port), "--data-dir",
                            os.path.join(tmp, f"redis-{mode}-{rate_x}")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        sim_url, ctl_url = f"http://127.0.0.1:{sim_port}", f"http://127.0.0.1:{ctl_port}"
        assert wait_http(sim_url + "/health", sim, 60) and wait_http(ctl_url + "/health", ctl, 120)
        result = asyncio.run(replay(ctl_url, sim_url, trace, mode == "no_cache", dup, nondup))
        result["backend_requests"] = httpx.get(sim_url + "/stats").json()["served"]
    finally:
        stop_group(ctl)
        stop_group(sim)
    result.update(mode=mode, load_x=rate_x, offered_rps=rate_x * CAPACITY)
    print(json.dumps({k: v for k, v in result.items() if k != "queue"}), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--rates", default="0.5,1.0,1.3")
    parser.add_argument("--config", default="configs/policies.yaml")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    tmp = tempfile.mkdtemp()
    configs = {"no_cache": Path(args.config), "static": static_config(Path(args.config), Path(tmp) / "static.yaml"),
               "load_based": Path(args.config)}
    runs = []
    for rate_x in [float(r) for r in args.rates.split(",")]:
        trace, dup, nondup = build_trace(int(args.seconds * rate_x * CAPACITY), rate_x * CAPACITY, seed=7)
        for mode, config in configs.items():
            runs.append(run_one(mode, rate_x, trace, config, dup, nondup, tmp))
    summary = {}
    for rate_x in {r["load_x"] for r in runs}:
        by = {r["mode"]: r for r in runs if r["load_x"] == rate_x}
        summary[str(rate_x)] = {"backend_reduction_vs_static": 1 - by["load_based"]["backend_requests"] / max(1, by["static"]["backend_requests"]),
                                "backend_reduction_vs_no_cache": 1 - by["load_based"]["backend_requests"] / max(1, by["no_cache"]["backend_requests"])}
    (out / "closed_loop.json").write_text(json.dumps({"capacity_rps": CAPACITY, "slots": SLOTS, "service_seconds": SERVICE_S,
                                                      "seconds": args.seconds, "summary": summary, "runs": runs}, indent=1))
    fig, axes = plotting.subplots(1, len({r["load_x"] for r in runs}), figsize=(15, 4), squeeze=False)
    for ax, rate_x in zip(axes[0], sorted({r["load_x"] for r in runs})):
        for r in (r for r in runs if r["load_x"] == rate_x):
            ax.plot([q[0] for q in r["queue"]], [q[1] for q in r["queue"]], label=f"{r['mode']} ({r['backend_requests']} to backend)")
        ax.set(title=f"{rate_x}x capacity", xlabel="s", ylabel="backend queue (waiting)")
    plotting.save(fig, out / "closed_loop.png", axes[0])
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
