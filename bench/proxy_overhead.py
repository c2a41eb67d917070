"""Proxy overhead: the same requests sent directly to vLLM and through the controller (same run).

    python -m bench.proxy_overhead [--requests 60] [--max-tokens 16]

Starts `vllm-adaptive serve` on SmolLM2 and a controller (embedded Redis) in front of it.
Every prompt is a distinct real ShareGPT first turn and carries `Cache-Control: no-store`, so
each proxied request takes the full miss path (embed, classify, lookup, forward) and the backend
does identical work either way. Direct and proxied requests alternate to share machine noise.
Also records the vLLM server's start-up time (launch to /health) and the peak resident memory
of its process tree during the run. Writes proxy_overhead.json/.png.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np

from bench import data, plotting
from controller.procs import free_port, start_vllm, stop_group, wait_http
from vllm_adaptive import model_store


def tree_rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children (vLLM runs API server, engine, worker)."""
    import psutil

    root = psutil.Process(pid)
    procs = [root, *root.children(recursive=True)]
    total = 0
    for proc in procs:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


def timed_post(url: str, body: dict, headers: dict) -> float:
    t0 = time.perf_counter()
    reply = httpx.post(url, json=body, headers=headers, timeout=120)
    reply.raise_for_status()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=60)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prompts = [p[:400] for p in data.sharegpt_first_turns(args.requests + 5)]
    model = str(model_store.ensure())
    vport, cport = free_port(), free_port()
    tmp = tempfile.mkdtemp()
    t_start = time.perf_counter()
    vllm = start_vllm(model, vport, os.path.join(tmp, "vllm.log"), max_model_len=1024)
    ctl = None
    rss: list[float] = []
    try:
        assert wait_http(f"http://127.0.0.1:{vport}/health", vllm, 600), "vLLM did not start"
        startup_s = time.perf_counter() - t_start
        ctl = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--backend",
                                f"http://127.0.0.1:{vport}", "--port", str(cport), "--data-dir",
                                os.path.join(tmp, "redis")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
        assert wait_http(f"http://127.0.0.1:{cport}/health", ctl, 120), "controller did not start"
        direct_url = f"http://127.0.0.1:{vport}/v1/chat/completions"
        proxy_url = f"http://127.0.0.1:{cport}/v1/chat/completions"
        headers = {"Cache-Control": "no-store", "Authorization": "Bearer bench"}
        for p in prompts[:5]:  # warm-up both paths
            body = {"model": "smollm2", "temperature": 0, "max_tokens": args.max_tokens,
                    "messages": [{"role": "user", "content": p}]}
            timed_post(direct_url, body, headers)
            timed_post(proxy_url, body, headers)
        direct, proxied = [], []
        for p in prompts[5:]:
            body = {"model": "smollm2", "temperature": 0, "max_tokens": args.max_tokens,
                    "messages": [{"role": "user", "content": p}], "ignore_eos": True}
            direct.append(timed_post(direct_url, body, headers))
            proxied.append(timed_post(proxy_url, body, headers))
            rss.append(tree_rss_mb(vllm.pid))
    finally:
        if ctl is not None:
            stop_group(ctl)
        stop_group(vllm)
    d, p = np.array(direct) * 1000, np.array(proxied) * 1000
    diff = p - d
    result = {
        "requests": len(d), "max_tokens": args.max_tokens,
        "vllm_startup_seconds": startup_s, "vllm_peak_rss_mb": max(rss),
        "direct_ms": {"p50": float(np.median(d)), "p99": float(np.percentile(d, 99))},
        "proxied_ms": {"p50": float(np.median(p)), "p99": float(np.percentile(p, 99))},
        "ratio_p50": float(np.median(p) / np.median(d)),
        "added_ms_per_request": {"p50": float(np.median(diff)), "p99": float(np.percentile(diff, 99))},
    }
    print(json.dumps(result, indent=1))
    (out / "proxy_overhead.json").write_text(json.dumps(result, indent=1))
    fig, ax = plotting.subplots(figsize=(6, 4))
    ax.boxplot([d, p], tick_labels=["direct to vLLM", "through controller (miss path)"])
    ax.set(ylabel="request latency (ms)", title=f"proxy overhead, {len(d)} requests, {args.max_tokens} tokens each")
    plotting.save(fig, out / "proxy_overhead.png", [ax], legend=False)


if __name__ == "__main__":
    main()
