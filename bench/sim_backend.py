"""A simulated vLLM backend for long closed-loop sweeps and for the controller's tests (a stand-in
for a GPU fleet we don't have; a real HTTP server speaking vLLM's OpenAI wire format).

Service-time model: `--slots` requests run at once (like vLLM's running batch), each takes
`--service-seconds`; the rest wait in FIFO order. `/metrics` exports vLLM's gauge names
(`vllm:num_requests_waiting`, `vllm:num_requests_running`, `vllm:kv_cache_usage_perc` = running /
slots). The answer echoes the question (`ANSWER: <question>`), so a benchmark can tell which
question a cached answer was generated for. `/stats` counts requests served and the compute
profiles they asked for. A request's compute profile (`vllm_xargs.adaptive_profile`) divides its
service time by that profile's speed-up (`--profile-speedup calibrated-2=1.11,...`; bench.closed_loop
passes the speed-ups measured against stock vLLM compiled, bench/results/engine_speed.json). Chat requests may stream (SSE chunks
as vLLM sends them); `tool_choice: "required"` answers with a tool call of the first tool, the
way vLLM does (finish_reason "stop", arguments as a JSON string).

    python -m bench.sim_backend --port 8200 --slots 4 --service-seconds 0.4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse

from vllm_adaptive.endpoint import STATUS_PATH


def _sse(obj: dict[str, Any] | str) -> bytes:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj)}\n\n".encode()


def _message(body: dict[str, Any], question: str, answers: dict[str, str] | None = None) -> dict[str, Any]:
    """The assistant message vLLM would produce (a tool call when one is required)."""
    tools = body.get("tools") or []
    if body.get("tool_choice") == "required" and tools:
        name = tools[0]["function"]["name"]
        call = {"id": f"chatcmpl-tool-{abs(hash(question)) % 10**8}", "type": "function",
                "function": {"name": name, "arguments": json.dumps({"query": question})}}
        return {"role": "assistant", "content": None, "tool_calls": [call]}
    return {"role": "assistant", "content": f"ANSWER: {(answers or {}).get(question, question)}"}


def _chunks(rid: str, model: str, message: dict[str, Any]) -> list[dict[str, Any]]:
    """`message` as vLLM streams it: role, content (or tool-call deltas in two pieces), finish."""
    base = {"id": rid, "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
    out = [{**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    if message.get("tool_calls"):
        call = message["tool_calls"][0]
        args = call["function"]["arguments"]
        out.append({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
            {"index": 0, "id": call["id"], "type": "function", "function": {"name": call["function"]["name"], "arguments": args[:5]}}]}}]})
        out.append({**base, "choices": [{"index": 0, "finish_reason": None, "delta": {"tool_calls": [
            {"index": 0, "function": {"arguments": args[5:]}}]}}]})
    else:
        words = message["content"].split(" ")
        out += [{**base, "choices": [{"index": 0, "delta": {"content": w if i == 0 else " " + w}, "finish_reason": None}]}
                for i, w in enumerate(words)]
    out.append({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    return out


def _bad_request(exc: Exception) -> Response:
    return Response(json.dumps({"error": {"message": f"invalid request: {type(exc).__name__}",
                                          "type": "BadRequestError", "param": None, "code": 400}}),
                    status_code=400, media_type="application/json")


def build(slots: int, service_seconds: float, speedups: dict[str, float] | None = None,
          answers: dict[str, str] | None = None, serves: list[str] | None = None) -> FastAPI:
    """`answers`: question -> what to echo instead (an oracle: equivalent questions, one answer).
    `serves`: the profiles it serves, its default first, as the plugin's status route reports them
    (a compiled engine serves one); a request naming another runs the default, as in the plugin.
    None: no status route (the controller then sends it any profile; counted as asked)."""
    app = FastAPI()
    sem = asyncio.Semaphore(slots)
    state: dict[str, Any] = {"waiting": 0, "running": 0, "served": 0}
    profiles: Counter[str] = Counter()

    async def serve(body: dict[str, Any]) -> None:
        profile = (body.get("vllm_xargs") or {}).get("adaptive_profile")
        if serves is not None and profile not in serves:
            profile = serves[0]
        profiles[str(profile)] += 1
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

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        try:  # what vLLM's request validation refuses with a 400
            body = await request.json()
            question = str(body["messages"][-1]["content"])
            message = _message(body, question, answers)
        except (ValueError, KeyError, IndexError, TypeError, AttributeError) as exc:
            return _bad_request(exc)
        await serve(body)
        rid, model = f"sim-{state['served']}", str(body.get("model", "sim"))
        if body.get("stream"):
            async def events() -> AsyncIterator[bytes]:
                for chunk in _chunks(rid, model, message):
                    yield _sse(chunk)
                yield _sse("[DONE]")
            return StreamingResponse(events(), media_type="text/event-stream")
        return Response(json.dumps({
            "id": rid, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}), media_type="application/json")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        try:
            body = await request.json()
            prompt = body["prompt"]
        except (ValueError, KeyError, TypeError) as exc:
            return _bad_request(exc)
        await serve(body)
        return Response(json.dumps({
            "id": f"sim-{state['served']}", "object": "text_completion", "created": int(time.time()),
            "model": str(body.get("model", "sim")),
            "choices": [{"index": 0, "text": f" ANSWER: {prompt}", "finish_reason": "length"}]}),
            media_type="application/json")

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(
            f"vllm:num_requests_waiting{{engine=\"0\"}} {state['waiting']}\n"
            f"vllm:num_requests_running{{engine=\"0\"}} {state['running']}\n"
            f"vllm:kv_cache_usage_perc{{engine=\"0\"}} {state['running'] / slots}\n")

    @app.get("/stats")
    async def stats() -> dict:
        return {**state, "profiles": dict(profiles)}

    @app.get("/health")
    async def health() -> dict:
        return {"ok": True}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": "sim", "object": "model"}]}

    if serves is not None:
        @app.get(STATUS_PATH)
        async def status() -> dict:  # the parts of vllm_adaptive.endpoint's answer a controller reads
            table = {"default": serves[0], "profiles": {name: {} for name in serves}}
            return {"plugin": "adaptive", "active": True, "workers": [{"profiles": table}]}

    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--service-seconds", type=float, default=0.4)
    parser.add_argument("--profile-speedup", default="", help="NAME=FACTOR,... (default: every profile 1.0)")
    parser.add_argument("--answers", default=None, help="JSON file {question: answer key}: equivalent questions, one answer")
    parser.add_argument("--serves", default=None, help="PROFILE,... served, default first (default: no plugin)")
    args = parser.parse_args()
    answers = json.loads(Path(args.answers).read_text()) if args.answers else None
    speedups = {k: float(v) for k, v in (item.split("=") for item in args.profile_speedup.split(",") if item)}
    serves = args.serves.split(",") if args.serves else None
    uvicorn.run(build(args.slots, args.service_seconds, speedups, answers, serves), host="127.0.0.1", port=args.port,
                log_level="warning")
