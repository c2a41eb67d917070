"""A simulated vLLM backend for long closed-loop sweeps (a stand-in for a GPU fleet we don't have).

Service-time model: `--slots` requests run at once (like vLLM's running batch), each takes
`--service-seconds`; the rest wait in FIFO order. `/metrics` exports vLLM's gauge names
(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` = running /
slots). The answer echoes the question (`ANSWER: <question>`), so a benchmark can tell which
question a cached answer was generated for. `/stats` counts requests served. A request's compute
profile (`vllm_xargs.adaptive_profile`) divides its service time by that profile's speed-up as
measured on the real plugin (`--profile-speedup calibrated-2=1.087,...`, bench/results/skip_pareto.json).

    python -m bench.sim_backend --port 8200 --slots 4 --service-seconds 0.4
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse


def build(slots: int, service_seconds: float, speedups: dict[str, float] | None = None) -> FastAPI:
    app = FastAPI()
    sem = asyncio.Semaphore(slots)
    state = {"waiting": 0, "running": 0, "served": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        question = body["messages"][-1]["content"]
        profile = (body.get("vllm_xargs") or {}).get("adaptive_profile")
        seconds = service_seconds / (speedups or {}).get(profile, 1.0)
        state["waiting"] += 1
        async with sem:
            state["waiting"] -= 1
            state["running"] += 1
            try:
                await asyncio.sleep(seconds)
            finally:
                state["running"] -= 1
        state["served"] += 1
        return {"id": f"sim-{state['served']}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model", "sim"),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": f"ANSWER: {question}"},
                             "finish_reason": "stop"}]}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            f"vllm:num_requests_waiting{{engine=\"0\"}} {state['waiting']}\n"
            f"vllm:num_requests_running{{engine=\"0\"}} {state['running']}\n"
            f"vllm:kv_cache_usage_perc{{engine=\"0\"}} {state['running'] / slots}\n")

    @app.get("/stats")
    async def stats() -> dict:
        return dict(state)

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "sim", "object": "model"}]}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--service-seconds", type=float, default=0.4)
    parser.add_argument("--profile-speedup", default="", help="NAME=FACTOR,... (default: every profile 1.0)")
    args = parser.parse_args()
    speedups = {k: float(v) for k, v in (item.split("=") for item in args.profile_speedup.split(",") if item)}
    uvicorn.run(build(args.slots, args.service_seconds, speedups), host="127.0.0.1", port=args.port, log_level="warning")
