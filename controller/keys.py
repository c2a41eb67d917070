"""What a cached answer may be shared across: the request's hard partition and its query text.

Two requests can share an answer only when everything that changes the answer is
equal: tenant, endpoint, model, system prompt, the preceding turns inside the
history window, and every other request field (sampling parameters, tools,
response format, ...). Those go into `partition`, a hash compared exactly; only
the last user turn (`query`) is compared by meaning.

The client's own `vllm_xargs` (e.g. an `adaptive_profile` it chose) changes the answer, so it is
part of the partition; the profile the controller adds later is not (see controller.plan).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

ANONYMOUS = "anonymous"
#: Fields that change how the answer is delivered, never what it says.
_DELIVERY_FIELDS = {"stream", "stream_options", "user"}


@dataclass(frozen=True)
class CacheKey:
    """The parts of a request that decide which cached answers it may receive."""

    tenant: str
    partition: str
    query: str
    temperature: float


def _digest(obj: Any) -> str:
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


def tenant_of(headers: dict[str, str], tenant_header: str) -> str:
    """Hash of the caller's credential (raw keys are never stored); `anonymous` without one."""
    raw = headers.get(tenant_header.lower(), "").strip()
    if tenant_header.lower() == "authorization" and raw.lower().startswith("bearer "):
        raw = raw[7:].strip()
    return hashlib.sha256(raw.encode()).hexdigest()[:32] if raw else ANONYMOUS


def _text_of(content: Any) -> str | None:
    """Plain text of a chat message's content (string or list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and all(
        isinstance(p, dict) and p.get("type") == "text" for p in content
    ):
        return "\n".join(str(p.get("text", "")) for p in content)
    return None  # images, audio, ...: not cached


def cache_key(
    endpoint: str, body: dict[str, Any], headers: dict[str, str], tenant_header: str,
    history_window: int,
) -> CacheKey | None:
    """The cache key of a request, or None when its shape cannot be cached safely."""
    params = {k: v for k, v in body.items() if k not in _DELIVERY_FIELDS | {"messages", "prompt", "vllm_xargs"}}
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return None  # malformed: not cached; the backend answers with its own 400
    if xargs:  # {} and absent ask for the same answer
        params["vllm_xargs"] = xargs
    raw_temperature = body.get("temperature")
    if raw_temperature is None:
        temperature = 1.0  # OpenAI's default: sampled
    elif isinstance(raw_temperature, (int, float)) and not isinstance(raw_temperature, bool):
        temperature = float(raw_temperature)
    else:
        return None  # malformed: not cached; the backend answers with its own 400
    tenant = tenant_of(headers, tenant_header)
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict):
            return None
        last = messages[-1]
        query = _text_of(last.get("content"))
        if last.get("role") != "user" or query is None:
            return None
        earlier = messages[:-1]
        system = [m for m in earlier if isinstance(m, dict) and m.get("role") in ("system", "developer")]
        turns = [m for m in earlier if m not in system]
        history = turns[-history_window:] if history_window else []
        context = {"system": system, "history": history}
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            return None
        query, context = prompt, {}
    partition = _digest({"tenant": tenant, "endpoint": endpoint, "params": params, **context})
    return CacheKey(tenant=tenant, partition=partition, query=query, temperature=temperature)
