"""Controller under load: sustained request rate at a p99 bound, and a soak with RSS / fd sampling.

One controller process (`adaptive-controller serve`, its own embedded Redis) in front of the
simulated backend (bench/sim_backend.py, answering in `--service-ms`), driven by an open-loop
generator at fixed rates on the same 2 cores. Questions repeat so that about `--hit-ratio` of
requests are cache hits. "Added" latency is the controller's: for a miss, the end-to-end time
minus the backend's own service time at the same rate (measured directly, same run); a hit is
all added. The soak samples the controller's RSS and open file descriptors every 10 s.

    python -m bench.fleet load --rates 25,50,100,150     # sustained rate at added p99 <= 20 ms
    python -m bench.fleet soak --rate 25 --seconds 600   # RSS / fd curves, errors
    python -m bench.fleet replicas --n 200               # visibility delay between two replicas
    python -m bench.fleet breaker                        # latency with Redis hung (SIGSTOP) vs healthy
Results: bench/results/fleet_{load,soak,replicas,breaker}.json (+ PNG for load and soak).
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

from bench import machine, plotting
from controller.procs import free_port, stop_group, wait_http

RESULTS = Path(__file__).parent / "results"
REPO = Path(__file__).resolve().parents[1]


class Stack:
    """The simulated backend and controllers (an embedded Redis, or `redis` shared), as processes."""

    def __init__(self, service_ms: float, workdir: Path, redis: str | None = None) -> None:
        self.backend_port = free_port()
        self.backend = f"http://127.0.0.1:{self.backend_port}"
        self.procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.sim_backend", "--port", str(self.backend_port), "--slots", "64",
             "--service-seconds", str(service_ms / 1000)], cwd=REPO, start_new_session=True,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
        assert wait_http(self.backend + "/health", self.procs[0], 60), "sim backend did not start"
        self.controller, self.url = self.add_controller(workdir, redis)

    def add_controller(self, workdir: Path, redis: str | None) -> tuple[subprocess.Popen, str]:
        """Start one more controller (a replica when they share `redis`)."""
        port = free_port()
        store = ["--redis", redis] if redis else ["--data-dir", str(workdir / "redis")]
        proc = subprocess.Popen(
            [sys.executable, "-m", "controller.cli", "serve", "--config", str(REPO / "configs" / "policies.yaml"),
             "--backend", self.backend, "--port", str(port), "--admin-token", "bench", *store],
            cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        assert wait_http(url + "/health", proc, 120), "controller did not start"
        return proc, url

    def stop(self) -> None:
        for proc in self.procs:
            stop_group(proc)


def questions(n: int, hit_ratio: float, seed: int = 0) -> list[tuple[str, bool]]:
    """`n` (question, expected_repeat) pairs: a repeat re-asks an earlier question exactly."""
    rng = random.Random(seed)
    asked: list[str] = []
    out = []
    for i in range(n):
        if asked and rng.random() < hit_ratio:
            out.append((rng.choice(asked), True))
        else:
            q = f"What is the capital of the province with the code {i}-{rng.randrange(10**6)}?"
            asked.append(q)
            out.append((q, False))
    return out


async def drive(url: str, rate: float, seconds: float, hit_ratio: float, seed: int = 0) -> dict:
    """Open-loop: one request every 1/rate s for `seconds`; latency per result kind."""
    n = int(rate * seconds)
    plan = questions(n, hit_ratio, seed)
    lat: dict[str, list[float]] = {"HIT": [], "MISS": [], "BYPASS": [], "direct": []}
    errors: list[str] = []
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        async def one(question: str) -> None:
            t0 = time.perf_counter()
            try:
                r = await client.post(url + "/v1/chat/completions", json={
                    "model": "sim", "temperature": 0, "messages": [{"role": "user", "content": question}]})
            except httpx.HTTPError as exc:
                errors.append(type(exc).__name__)
                return
            dt = time.perf_counter() - t0
            if r.status_code != 200:
                errors.append(str(r.status_code))
                return
            lat[r.headers.get("x-cache", "direct")].append(dt)

        start = time.perf_counter()
        tasks = []
        for i, (question, _) in enumerate(plan):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(question)))
        await asyncio.gather(*tasks)
        wall = time.perf_counter() - start
    summary = {k: _summary(v) for k, v in lat.items() if v}
    return {"rate": rate, "sent": n, "achieved_rate": n / wall, "errors": len(errors),
            "error_kinds": sorted(set(errors)), "latency": summary}


def load(args: argparse.Namespace) -> None:
    rates = [float(r) for r in args.rates.split(",")]
    out = {"machine": machine.describe(), "service_ms": args.service_ms, "hit_ratio": args.hit_ratio,
           "seconds_per_rate": args.seconds, "command": machine.command("bench.fleet"), "rates": []}
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(args.service_ms, Path(tmp))
        try:
            for i, rate in enumerate(rates):
                direct = asyncio.run(drive(stack.backend, rate, args.seconds, 0.0, seed=100 + i))
                via = asyncio.run(drive(stack.url, rate, args.seconds, args.hit_ratio, seed=200 + i))
                base = direct["latency"]["direct"]
                row = {"rate": rate, "direct": direct, "controller": via}
                for kind in ("HIT", "MISS"):
                    if kind in via["latency"]:
                        own = via["latency"][kind]
                        sub = base if kind == "MISS" else {"p50_ms": 0.0, "p99_ms": 0.0}
                        row[f"added_{kind.lower()}_p50_ms"] = own["p50_ms"] - sub["p50_ms"]
                        row[f"added_{kind.lower()}_p99_ms"] = own["p99_ms"] - sub["p99_ms"]
                out["rates"].append(row)
                print(json.dumps({k: v for k, v in row.items() if k.startswith(("rate", "added"))}), flush=True)
        finally:
            stack.stop()
    ok = [r["rate"] for r in out["rates"] if r["controller"]["errors"] == 0
          and r.get("added_hit_p99_ms", 0) <= args.bound_ms and r.get("added_miss_p99_ms", 0) <= args.bound_ms]
    out["sustained_rate_at_bound"] = max(ok, default=None)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_load.json").write_text(json.dumps(out, indent=1))
    fig, ax = plotting.subplots(figsize=(7, 4))
    for kind in ("hit", "miss"):
        xs = [r["rate"] for r in out["rates"] if f"added_{kind}_p99_ms" in r]
        ax.plot(xs, [r[f"added_{kind}_p99_ms"] for r in out["rates"] if f"added_{kind}_p99_ms" in r], "o-", label=f"{kind}: added p99")
        ax.plot(xs, [r[f"added_{kind}_p50_ms"] for r in out["rates"] if f"added_{kind}_p50_ms" in r], "x--", label=f"{kind}: added p50")
    ax.axhline(args.bound_ms, color="red", lw=0.8, label=f"{args.bound_ms} ms bound")
    ax.set(xlabel="offered requests/s", ylabel="ms added by the controller", yscale="log",
           title=f"one controller, 2 cores, {args.hit_ratio:.0%} hits, backend {args.service_ms} ms")
    plotting.save(fig, RESULTS / "fleet_load.png", [ax])
    print("sustained rate at the bound:", out["sustained_rate_at_bound"])


def sample(pid: int) -> dict[str, float]:
    """RSS (MiB) and open file descriptors of a process."""
    rss = 0.0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) / 1024
    return {"rss_mib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


async def soak_run(url: str, pid: int, rate: float, seconds: float, hit_ratio: float, every: float = 10.0) -> dict:
    """Drive `url` at `rate` for `seconds` in windows of `every` s, sampling `pid` after each."""
    samples = [{"t": 0.0, **sample(pid)}]
    windows = []
    for i in range(max(1, int(seconds / every))):
        windows.append(await drive(url, rate, every, hit_ratio, seed=1000 + i))
        samples.append({"t": (i + 1) * every, **sample(pid)})
    return {"rate": rate, "seconds": seconds, "samples": samples,
            "sent": sum(w["sent"] for w in windows), "errors": sum(w["errors"] for w in windows),
            "error_kinds": sorted({k for w in windows for k in w["error_kinds"]}),
            "load_average": os.getloadavg(),
            "p99_ms_per_window": [max(v["p99_ms"] for v in w["latency"].values()) for w in windows]}


def soak(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        stack = Stack(args.service_ms, Path(tmp))
        try:
            out = asyncio.run(soak_run(stack.url, stack.controller.pid, args.rate, args.seconds, args.hit_ratio))
        finally:
            stack.stop()
    out |= {"machine": machine.describe(), "command": machine.command("bench.fleet"), "service_ms": args.service_ms}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_soak.json").write_text(json.dumps(out, indent=1))
    fig, (a, b) = plotting.subplots(1, 2, figsize=(10, 4))
    ts = [s["t"] for s in out["samples"]]
    a.plot(ts, [s["rss_mib"] for s in out["samples"]], "o-", label="controller RSS (MiB)")
    b.plot(ts, [s["fds"] for s in out["samples"]], "o-", label="open file descriptors")
    for ax in (a, b):
        ax.set(xlabel="seconds")
    fig.suptitle(f"soak: {args.rate} req/s for {args.seconds:.0f} s, {out['sent']} requests, {out['errors']} errors")
    plotting.save(fig, RESULTS / "fleet_soak.png", [a, b])
    print(json.dumps({k: out[k] for k in ("sent", "errors")}), out["samples"][0], out["samples"][-1])


def _summary(values: list[float]) -> dict[str, float]:
    """Count and latency percentiles (ms) of `values` (seconds)."""
    ms = 1000 * np.asarray(values)
    return {"n": len(values), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99)),
            "max_ms": float(ms.max())}


def replicas(args: argparse.Namespace) -> None:
    """Store through replica A, poll replica B (lookup only: no-store) until it serves the answer;
    then invalidate through A and poll B until it no longer does."""
    from controller.redis_server import EmbeddedRedis

    seen, gone = [], []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        stack = Stack(args.service_ms, Path(tmp), redis.url)
        _, other = stack.add_controller(Path(tmp), redis.url)
        try:
            with httpx.Client(timeout=30) as client:
                def ask(url: str, q: str, tenant: str, **headers: str) -> str:
                    return client.post(url + "/v1/chat/completions", headers={
                        "Authorization": f"Bearer {tenant}", "X-Adaptive-Category": "factual", **headers}, json={
                        "model": "sim", "temperature": 0, "messages": [{"role": "user", "content": q}]}).headers["x-cache"]

                def wait(q: str, tenant: str, want: str) -> float:
                    t0 = time.perf_counter()
                    while ask(other, q, tenant, **{"Cache-Control": "no-store"}) != want:
                        if time.perf_counter() - t0 > 10:
                            return float("inf")
                    return time.perf_counter() - t0

                for i in range(args.n):
                    q, tenant = f"Which river flows through the city with postcode {i * 7919}?", f"tenant-{i}"
                    ask(stack.url, q, tenant)
                    seen.append(wait(q, tenant, "HIT"))
                    client.post(stack.url + "/admin/invalidate", headers={"X-Admin-Token": "bench"},
                                json={"tenant": tenant})
                    gone.append(wait(q, tenant, "MISS"))
        finally:
            stack.stop()
    out = {"machine": machine.describe(), "command": machine.command("bench.fleet"), "n": args.n,
           "store_visible_on_other_replica": _summary(seen), "invalidation_visible_on_other_replica": _summary(gone),
           "note": "delay from the storing response (or the invalidate reply) to the first poll that sees it; "
                   "each poll is one lookup round-trip (about a millisecond), so that is the resolution"}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_replicas.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


def breaker(args: argparse.Namespace) -> None:
    """Request latency with Redis healthy, then hung (SIGSTOP), then back (SIGCONT)."""
    import signal

    from controller.redis_server import EmbeddedRedis

    phases: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp, EmbeddedRedis(Path(tmp) / "redis") as redis:
        stack = Stack(args.service_ms, Path(tmp), redis.url)
        try:
            with httpx.Client(timeout=30) as client:
                def run(phase: str, n: int) -> None:
                    for i in range(n):
                        t0 = time.perf_counter()
                        r = client.post(stack.url + "/v1/chat/completions", json={
                            "model": "sim", "temperature": 0,
                            "messages": [{"role": "user", "content": f"{phase}: what is item {i}?"}]})
                        assert r.status_code == 200
                        phases.setdefault(phase, []).append(time.perf_counter() - t0)
                run("healthy", args.n)
                os.kill(redis._proc.pid, signal.SIGSTOP)
                run("hung_first_request", 1)
                run("hung_breaker_open", args.n)
                os.kill(redis._proc.pid, signal.SIGCONT)
                time.sleep(2.5)  # past the cooldown: the next request is the probe
                run("recovered", args.n)
        finally:
            stack.stop()
    out = {"machine": machine.describe(), "command": machine.command("bench.fleet"), "service_ms": args.service_ms,
           "phases": {k: _summary(v) for k, v in phases.items()}}
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_breaker.json").write_text(json.dumps(out, indent=1))
    print(json.dumps(out["phases"], indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="mode", required=True)
    for name in ("load", "soak", "replicas", "breaker"):
        p = sub.add_parser(name)
        p.add_argument("--service-ms", type=float, default=4.0)
        p.add_argument("--hit-ratio", type=float, default=0.3)
    sub.choices["load"].add_argument("--rates", default="25,50,75,100,150")
    sub.choices["load"].add_argument("--seconds", type=float, default=20.0)
    sub.choices["load"].add_argument("--bound-ms", type=float, default=20.0)
    sub.choices["soak"].add_argument("--rate", type=float, default=25.0)
    sub.choices["soak"].add_argument("--seconds", type=float, default=600.0)
    sub.choices["replicas"].add_argument("--n", type=int, default=200)
    sub.choices["breaker"].add_argument("--n", type=int, default=100)
    args = parser.parse_args()
    {"load": load, "soak": soak, "replicas": replicas, "breaker": breaker}[args.mode](args)


if __name__ == "__main__":
    main()
