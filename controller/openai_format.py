"""OpenAI wire formats: errors, SSE framing, and turning streams into completions and back."""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fastapi.responses import JSONResponse


def error(status: int, message: str, type_: str = "invalid_request_error", param: str | None = None) -> JSONResponse:
    """An OpenAI-style error body."""
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": param, "code": status}},
        status_code=status,
    )


def sse(obj: dict[str, Any] | str) -> bytes:
    """One server-sent event."""
    data = obj if isinstance(obj, str) else json.dumps(obj, separators=(",", ":"))
    return f"data: {data}\n\n".encode()


class StreamAssembler:
    """Rebuilds the non-streamed response from a stream of OpenAI chunks.

    `complete` is True only when the stream ended with `[DONE]` and every choice
    carried a finish_reason: an interrupted stream is never cached. Tool-call deltas are
    assembled (id, type, function name, arguments) into the message's `tool_calls`, so the
    rebuilt body says what the stream said (and controller.plan.storable can refuse it).
    """

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.first: dict[str, Any] | None = None
        self.texts: dict[int, list[str]] = {}
        self.finish: dict[int, str | None] = {}
        self.tool_calls: dict[int, dict[int, dict[str, Any]]] = {}  # choice -> call index -> call
        self.usage: dict[str, Any] | None = None
        self.done = False
        self._buffer = b""

    def feed(self, chunk: bytes) -> None:
        self._buffer += chunk
        while b"\n\n" in self._buffer:
            event, self._buffer = self._buffer.split(b"\n\n", 1)
            for line in event.split(b"\n"):
                if line.startswith(b"data:"):
                    self._data(line[5:].strip())

    def _data(self, data: bytes) -> None:
        if data == b"[DONE]":
            self.done = True
            return
        try:
            obj = json.loads(data)
        except ValueError:
            return
        self.first = self.first or obj
        if obj.get("usage"):
            self.usage = obj["usage"]
        for choice in obj.get("choices") or []:
            i = choice.get("index", 0)
            delta = choice.get("delta") or {}
            piece = choice.get("text") if self.endpoint == "completions" else delta.get("content")
            self.texts.setdefault(i, []).append(piece or "")
            for call in delta.get("tool_calls") or []:
                self._tool_call(i, call)
            if choice.get("finish_reason"):
                self.finish[i] = choice["finish_reason"]

    def _tool_call(self, choice: int, delta: dict[str, Any]) -> None:
        call = self.tool_calls.setdefault(choice, {}).setdefault(
            delta.get("index", 0), {"id": "", "type": "function", "function": {"name": "", "arguments": ""}})
        call["id"] = delta.get("id") or call["id"]
        call["type"] = delta.get("type") or call["type"]
        function = delta.get("function") or {}
        call["function"]["name"] += function.get("name") or ""
        call["function"]["arguments"] += function.get("arguments") or ""

    @property
    def complete(self) -> bool:
        return self.done and bool(self.texts) and all(self.finish.get(i) for i in self.texts)

    def response(self) -> dict[str, Any]:
        """The equivalent non-streamed response body."""
        first = self.first or {}
        choices = []
        for i in sorted(self.texts):
            text = "".join(self.texts[i])
            if self.endpoint == "completions":
                choices.append({"index": i, "text": text, "logprobs": None, "finish_reason": self.finish.get(i)})
            else:
                message: dict[str, Any] = {"role": "assistant", "content": text}
                if i in self.tool_calls:
                    message["tool_calls"] = [self.tool_calls[i][k] for k in sorted(self.tool_calls[i])]
                choices.append({"index": i, "message": message, "logprobs": None, "finish_reason": self.finish.get(i)})
        return {
            "id": first.get("id", ""), "created": first.get("created", int(time.time())),
            "model": first.get("model", ""),
            "object": "text_completion" if self.endpoint == "completions" else "chat.completion",
            "choices": choices, "usage": self.usage,
        }


def fresh_copy(response: dict[str, Any]) -> dict[str, Any]:
    """A cached response with a new id and timestamp, as a new answer would have."""
    out = dict(response)
    out["id"] = f"cache-{uuid.uuid4().hex}"
    out["created"] = int(time.time())
    return out


def replay_stream(endpoint: str, response: dict[str, Any]) -> list[bytes]:
    """A cached (non-streamed) response as a valid SSE stream ending in [DONE]."""
    base = {"id": response["id"], "created": response["created"], "model": response.get("model", "")}
    events = []
    for choice in response.get("choices", []):
        i = choice.get("index", 0)
        if endpoint == "completions":
            obj = "text_completion"
            events.append({**base, "object": obj, "choices": [{"index": i, "text": choice.get("text", ""), "logprobs": None, "finish_reason": None}]})
            events.append({**base, "object": obj, "choices": [{"index": i, "text": "", "logprobs": None, "finish_reason": choice.get("finish_reason")}]})
        else:
            obj = "chat.completion.chunk"
            content = (choice.get("message") or {}).get("content") or ""
            events.append({**base, "object": obj, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}]})
            events.append({**base, "object": obj, "choices": [{"index": i, "delta": {"content": content}, "logprobs": None, "finish_reason": None}]})
            events.append({**base, "object": obj, "choices": [{"index": i, "delta": {}, "logprobs": None, "finish_reason": choice.get("finish_reason")}]})
    return [sse(e) for e in events] + [sse("[DONE]")]
