"""A simulated vLLM backend for long closed-loop sweeps (a stand-in for a GPU fleet we don't have).

Service-time model: `--slots` requests run at once (like vLLM's running batch), each takes
`--service-seconds`; the rest wait in FIFO order. `/metrics` exports vLLM's gauge names
(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` = running /
slots). The answer echoes the question (`ANSWER: <question>`), so a benchmark can tell which
question a cached answer was generated for. `/stats` counts requests served.

    python -m bench.sim_backend --port 8200 --slots 4 --service-seconds 0.4
"""

from __future__ import annotations

import argparse
import asyncio
import time

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse


def build(slots: int, service_seconds: float) -> FastAPI:
    app = FastAPI()
    sem = asyncio.Semaphore(slots)
    state = {"waiting": 0, "running": 0, "served": 0}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        question = body["messages"][-1]["content"]
        state["waiting"] += 1
        async with sem:
            state["waiting"] -= 1
            state["running"] += 1
            try:
                await asyncio.sleep(service_seconds)
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
    args = parser.parse_args()
    uvicorn.run(build(args.slots, args.service_seconds), host="127.0.0.1", port=args.port, log_level="warning")
