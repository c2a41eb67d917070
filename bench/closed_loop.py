"""Closed loop: mixed-category traffic through the controller at 0.5x / 1.0x / 1.3x of a backend's
capacity, with no cache, static per-category policies, and load-based policies.

    python -m bench.closed_loop [--trace paraphrase|zipf] [--seconds 60] [--rates 0.5,1.0,1.3]
                                [--factual-floors 0.95,0.92,0.90,0.88] [--backend sim|vllm]

Backends. `sim` (bench/sim_backend.py, documented service-time model: 4 slots x 0.4 s = 10 req/s,
standing for stock vLLM compiled; a brownout profile shortens service by its decode speed-up at
batch 8 when one compiled plugin engine serves it per request, relative to stock vLLM compiled in
the same bench.engine_speed run, bench/results/engine_speed.json) for the sweeps. `vllm`: the real
`vllm-adaptive serve` on SmolLM2 (CPU), compiled (vLLM's default), serving `full` and the ladder's
calibrated profiles per request (one compiled view each, the launcher's grouping scheduler); its
capacity is measured first (requests/s with 8 concurrent clients, 32 new tokens each) and the
rates are multiples of it.

Traces (seeded, replayable, real prompts, Poisson arrivals, open loop):
* `zipf`: 50 % QQP questions (300 labelled pairs, either side, Zipf popularity: mostly exact
  repeats), 20 % ShareGPT first turns, 15 % HumanEval prompts, 15 % time-sensitive questions;
* `paraphrase`: 60 % QQP questions from 200 labelled pairs (100 duplicates, 100 hard
  non-duplicates), uniform popularity, either side - so most reuse is a *paraphrase* (or a
  look-alike with another meaning); 15 % ShareGPT, 10 % HumanEval, 15 % time-sensitive.

Policies: `configs/policies.yaml` with every `load:` section removed (static), as is (load-based),
and load-based with the factual floor lowered to each `--factual-floors` value (the floors vs
false hits study). Load-based configs also get a brownout ladder [calibrated-2, calibrated-4]
for chat, code and factual.

Measured per run: requests reaching the backend (non-hit answers), client latency p50/p99, hit
rate, backend queue over time, and false hits among served hits: the bench remembers which
question produced each answer it received from the backend; a hit whose answer came from the
same question or a labelled duplicate is correct, from a labelled non-duplicate is false,
otherwise unjudged (reported). Writes closed_loop_<trace>[_vllm].json / .png.
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
from collections import defaultdict
from pathlib import Path

import httpx
import numpy as np
import yaml

from bench import data, plotting
from controller.procs import free_port, start_vllm, stop_group, wait_http
from policies.schema import rebased

SLOTS, SERVICE_S = 4, 0.4
SIM_CAPACITY = SLOTS / SERVICE_S
LADDER = ["calibrated-2", "calibrated-4"]
CITIES = ["Paris", "London", "Tokyo", "Berlin", "Madrid", "Rome", "Cairo", "Lima", "Oslo", "Seoul"]
ASSETS = ["bitcoin", "gold", "Apple stock", "the euro", "oil", "silver", "Tesla stock", "ethereum"]


def build_trace(kind: str, n: int, rate: float, seed: int) -> tuple[list[tuple[float, str]], set, set]:
    """(arrival time, question) list plus the labelled duplicate / non-duplicate pairs in it."""
    rng = random.Random(seed)
    pairs = data.qqp_pairs(0)
    per_label = 150 if kind == "zipf" else 100
    dup = rng.sample([p for p in pairs if p["duplicate"]], per_label)
    nondup = rng.sample([p for p in pairs if not p["duplicate"]], per_label)
    qqp = dup + nondup
    rng.shuffle(qqp)
    chat = [c[:300] for c in data.sharegpt_first_turns(300)]
    code = data.humaneval_prompts()
    timely = [f"What is the weather in {c} today?" for c in CITIES] + [f"What is the price of {a} right now?" for a in ASSETS]
    mix = [0.5, 0.7, 0.85] if kind == "zipf" else [0.6, 0.75, 0.85]

    def pick(items):
        if kind == "zipf":
            return rng.choices(items, [1 / (i + 1) for i in range(len(items))])[0]
        return rng.choice(items)

    trace, t = [], 0.0
    for _ in range(n):
        t += rng.expovariate(rate)
        draw = rng.random()
        if draw < mix[0]:
            pair = pick(qqp)
            text = pair["a"] if rng.random() < 0.5 else pair["b"]
        elif draw < mix[1]:
            text = pick(chat)
        elif draw < mix[2]:
            text = pick(code)
        else:
            text = pick(timely)
        trace.append((t, text))
    same = lambda p: frozenset((p["a"], p["b"]))  # noqa: E731
    return trace, {same(p) for p in dup}, {same(p) for p in nondup}


def policy_variant(path: Path, out: Path, load: bool, factual_floor: float | None = None) -> Path:
    """The example policies without load sections (static), or with a ladder and a factual floor."""
    # written elsewhere: the file's relative paths must still point where the original's do
    doc = rebased(yaml.safe_load(path.read_text()), str(path.parent.resolve()))
    for cat in doc["categories"]:
        policy = cat["policy"]
        if not load:
            policy.pop("load", None)
            continue
        if cat["name"] in ("chat", "code", "factual"):
            policy.setdefault("load", {})["profile_ladder"] = LADDER
            # this bench measures what the ladder costs; the example's per-category bounds refuse it
            # (calibrated-2 is +23..57 % answer perplexity per category: configs/policies.yaml)
            policy.pop("max_quality_loss", None)
        if factual_floor is not None and cat["name"] == "factual":
            policy["load"]["threshold_floor"] = factual_floor
    out.write_text(yaml.safe_dump(doc))
    return out


def judge(text: str, sources: set[str], duplicates: set, non_duplicates: set) -> str:
    """correct / false / unjudged for a hit answering `text` with an answer produced for `sources`."""
    if text in sources or any(frozenset((s, text)) in duplicates for s in sources):
        return "correct"
    if sources and all(frozenset((s, text)) in non_duplicates for s in sources):
        return "false"
    return "unjudged"


async def replay(url: str, backend: str, model: str, trace, no_cache: bool, duplicates: set,
                 non_duplicates: set) -> dict:
    headers = {"Authorization": "Bearer bench"}
    if no_cache:
        headers["Cache-Control"] = "no-cache, no-store"
    latencies: list[float] = []
    counts = {"hits": 0, "to_backend": 0, "errors": 0}
    judged = {"correct": 0, "false": 0, "unjudged": 0}
    by_category: dict[str, dict[str, int]] = defaultdict(lambda: {"correct": 0, "false": 0, "unjudged": 0})
    produced_by: dict[str, set[str]] = defaultdict(set)  # backend answer -> questions that produced it
    queue: list[tuple[float, float]] = []
    levels: list[tuple[float, int]] = []
    async with httpx.AsyncClient(timeout=300, limits=httpx.Limits(max_connections=1000)) as client:
        start = time.perf_counter()

        async def one(at: float, text: str) -> None:
            await asyncio.sleep(max(0.0, at - (time.perf_counter() - start)))
            t0 = time.perf_counter()
            try:
                reply = await client.post(url + "/v1/chat/completions", headers=headers, json={
                    "model": model, "temperature": 0, "max_tokens": 32,
                    "messages": [{"role": "user", "content": text}]})
            except httpx.HTTPError:
                counts["errors"] += 1
                return
            latencies.append(time.perf_counter() - t0)
            if reply.status_code != 200:
                counts["errors"] += 1
                return
            answer = reply.json()["choices"][0]["message"]["content"]
            levels.append((time.perf_counter() - start, int(reply.headers.get("x-load-level", 0))))
            if reply.headers.get("x-cache") == "HIT":
                counts["hits"] += 1
                verdict = judge(text, produced_by.get(answer, set()), duplicates, non_duplicates)
                judged[verdict] += 1
                by_category[reply.headers.get("x-cache-category", "?")][verdict] += 1
            else:
                counts["to_backend"] += 1
                produced_by[answer].add(text)

        async def sample_queue() -> None:
            while True:
                try:
                    metrics = (await client.get(backend + "/metrics")).text
                    waiting = sum(float(line.split()[-1]) for line in metrics.splitlines()
                                  if line.startswith("vllm:num_requests_waiting"))
                    queue.append((time.perf_counter() - start, waiting))
                except (httpx.HTTPError, ValueError):
                    pass
                await asyncio.sleep(0.5)

        sampler = asyncio.create_task(sample_queue())
        await asyncio.gather(*(one(at, text) for at, text in trace))
        sampler.cancel()
    lat = np.array(latencies) * 1000
    hits = counts["hits"]
    return {"requests": len(trace), "errors": counts["errors"], "hits": hits, "hit_rate": hits / len(trace),
            "backend_requests": counts["to_backend"],
            "latency_ms": {"p50": float(np.percentile(lat, 50)), "p99": float(np.percentile(lat, 99))},
            "served_hits_judged": judged, "served_hits_judged_by_category": dict(by_category),
            "false_hit_rate_judged": judged["false"] / max(1, judged["correct"] + judged["false"]),
            "mean_load_level": float(np.mean([lv for _, lv in levels])) if levels else 0.0,
            "queue": queue}


def run_one(mode: str, rate_x: float, capacity: float, trace, config: Path, backend: str, model: str,
            dup, nondup, tmp: str) -> dict:
    ctl_port = free_port()
    ctl = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--config", str(config), "--backend",
                            backend, "--port", str(ctl_port), "--data-dir", os.path.join(tmp, f"redis-{mode}-{rate_x}")],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        ctl_url = f"http://127.0.0.1:{ctl_port}"
        assert wait_http(ctl_url + "/health", ctl, 120)
        result = asyncio.run(replay(ctl_url, backend, model, trace, mode == "no_cache", dup, nondup))
    finally:
        stop_group(ctl)
    result.update(mode=mode, load_x=rate_x, offered_rps=rate_x * capacity)
    print(json.dumps({k: v for k, v in result.items() if k != "queue"}), flush=True)
    return result


def start_sim(speedups: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "bench.sim_backend", "--port", str(port), "--slots", str(SLOTS),
                             "--service-seconds", str(SERVICE_S), "--profile-speedup", speedups], start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    assert wait_http(url + "/health", proc, 60)
    return proc, url


def measured_speedups(path: str = "bench/results/engine_speed.json") -> str:
    """Each brownout rung's decode speed at batch 8 served per request by one compiled plugin engine,
    relative to stock vLLM compiled in the same bench.engine_speed run (the simulated backend's base
    service time stands for stock vLLM compiled)."""
    result = json.loads(Path(path).read_text())
    stock = next(r for r in result["modes"] if r["mode"] == "stock compiled")
    rows = {r["profile"]: r for r in result["modes"] if r["mode"] == "plugin compiled per-request"}
    missing = sorted(set(LADDER) - set(rows))
    if missing:
        raise SystemExit(f"{path} has no 'plugin compiled per-request' row for {missing}: "
                         "run python -m bench.engine_speed first")
    return ",".join(f"{p}={rows[p]['decode_tps_b8'] / stock['decode_tps_b8']:.4f}" for p in LADDER)


def vllm_capacity(url: str, prompts: list[str], clients: int = 8, requests: int = 48) -> float:
    """Requests per second the real backend completes with `clients` concurrent clients."""
    async def go() -> float:
        async with httpx.AsyncClient(timeout=300) as client:
            todo = list(prompts[:requests])

            async def worker() -> None:
                while todo:
                    text = todo.pop()
                    await client.post(url + "/v1/chat/completions", json={
                        "model": "smollm2", "temperature": 0, "max_tokens": 32,
                        "messages": [{"role": "user", "content": text}]})
            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(clients)))
            return requests / (time.perf_counter() - t0)
    return asyncio.run(go())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trace", choices=["paraphrase", "zipf"], default="paraphrase")
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rates", default="0.5,1.0,1.3")
    parser.add_argument("--factual-floors", default="0.92,0.90,0.88,0.85,0.80",
                        help="extra load-based runs at the highest rate with these factual floors")
    parser.add_argument("--modes", default="no_cache,static,load_based")
    parser.add_argument("--backend", choices=["sim", "vllm"], default="sim")
    parser.add_argument("--config", default="configs/policies.yaml")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    tmp = tempfile.mkdtemp()
    base = Path(args.config)
    configs = {"no_cache": base, "static": policy_variant(base, Path(tmp) / "static.yaml", load=False),
               "load_based": policy_variant(base, Path(tmp) / "load.yaml", load=True)}
    configs = {m: configs[m] for m in args.modes.split(",")}
    rates = [float(r) for r in args.rates.split(",")]
    floors = [float(f) for f in args.factual_floors.split(",") if f]
    for floor in floors:
        configs[f"load_based_floor_{floor}"] = policy_variant(base, Path(tmp) / f"load-{floor}.yaml", True, floor)
    if args.backend == "sim":
        backend_proc, backend = start_sim(measured_speedups())
        model, capacity = "sim", SIM_CAPACITY
    else:
        from vllm_adaptive import model_store

        backend_port = free_port()
        backend = f"http://127.0.0.1:{backend_port}"
        backend_proc = start_vllm(str(model_store.ensure()), backend_port, os.path.join(tmp, "vllm.log"),
                                  profiles=str(Path("bench/results/profiles_smollm2.json").resolve()),
                                  extra=["--adaptive-serve", ",".join(["full", *LADDER])], eager=False)
        assert wait_http(backend + "/health", backend_proc, 900), Path(tmp, "vllm.log").read_text()[-3000:]
        model = "smollm2"
        capacity = vllm_capacity(backend, [c[:300] for c in data.sharegpt_first_turns(400)[300:]])
        print(f"measured vLLM capacity: {capacity:.2f} req/s", flush=True)
    runs = []
    try:
        for rate_x in rates:
            trace, dup, nondup = build_trace(args.trace, int(args.seconds * rate_x * capacity), rate_x * capacity, seed=7)
            for mode, config in configs.items():
                if mode.startswith("load_based_floor") and rate_x != max(rates):
                    continue
                runs.append(run_one(mode, rate_x, capacity, trace, config, backend, model, dup, nondup, tmp))
    finally:
        stop_group(backend_proc)
    summary = {}
    for rate_x in sorted({r["load_x"] for r in runs}):
        by = {r["mode"]: r for r in runs if r["load_x"] == rate_x}
        if "static" not in by:
            continue
        summary[str(rate_x)] = {
            mode: {"backend_requests": r["backend_requests"],
                   "backend_reduction_vs_static": 1 - r["backend_requests"] / max(1, by["static"]["backend_requests"]),
                   "false_hit_rate_judged": r["false_hit_rate_judged"], "hit_rate": r["hit_rate"],
                   "p50_ms": r["latency_ms"]["p50"], "p99_ms": r["latency_ms"]["p99"]}
            for mode, r in by.items()}
    name = f"closed_loop_{args.trace}" + ("_vllm" if args.backend == "vllm" else "")
    (out / f"{name}.json").write_text(json.dumps({
        "backend": args.backend, "capacity_rps": capacity, "trace": args.trace, "seconds": args.seconds,
        "sim": {"slots": SLOTS, "service_seconds": SERVICE_S} if args.backend == "sim" else None,
        "ladder": LADDER, "summary": summary, "runs": runs}, indent=1))
    shown = sorted({r["load_x"] for r in runs})
    fig, axes = plotting.subplots(1, len(shown), figsize=(5 * len(shown), 4), squeeze=False)
    for ax, rate_x in zip(axes[0], shown):
        for r in (r for r in runs if r["load_x"] == rate_x):
            ax.plot([q[0] for q in r["queue"]], [q[1] for q in r["queue"]],
                    label=f"{r['mode']} ({r['backend_requests']} to backend)")
        ax.set(title=f"{rate_x}x capacity ({args.trace}, {args.backend})", xlabel="s", ylabel="backend queue (waiting)")
    plotting.save(fig, out / f"{name}.png", axes[0])
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
