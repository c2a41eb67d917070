"""Talking to the backends: forward a request to the least-loaded one, fail over, relay streams.

In-flight requests are counted by one `Lease` per request (controller.backends), released when
the answer (or the stream) is over, whatever happens.

Faults: a backend that refuses the connection, or accepts it and sends nothing within the
upstream timeout (a hung process, a partition), is taken out of rotation for a while and the
next one is tried. A stream that breaks off or stalls mid-way ends, for the client, with an
OpenAI-style error event and `[DONE]` (as vLLM itself ends a failed stream); it is never cached.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any

import httpx
from fastapi.responses import JSONResponse, Response, StreamingResponse

from controller import openai_format as oai
from controller.backends import BackendPool, Lease
from controller.metrics import Metrics
from controller.plan import CATEGORY_HEADER, FULL_PROFILE, PROFILE_XARG
from controller.tasks import TaskSet
from policies.schema import LoadPolicy
from vllm_adaptive.endpoint import STATUS_PATH

log = logging.getLogger("controller.upstream")

DEFAULT_TIMEOUT_SECONDS = 120.0
#: Longest a response waits for its cache store (a healthy Redis takes about a millisecond).
STORE_WAIT = 0.05


def timeout(seconds: float = DEFAULT_TIMEOUT_SECONDS) -> httpx.Timeout:
    """`seconds` is the longest silence accepted from a backend: before the response headers (a
    non-streamed answer arrives whole, so it bounds generation time too) and between stream chunks."""
    return httpx.Timeout(connect=2.0, read=seconds, write=30.0, pool=5.0)
#: Headers the backend must not see: hop-by-hop, the controller's own, the admin credential.
HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding",
               CATEGORY_HEADER, "cache-control", "x-admin-token"}

#: Called with a complete, non-streamed response body once the backend's answer is over, and
#: the compute profile the backend ran for it.
OnComplete = Callable[[dict[str, Any], str], Awaitable[None]]


class Upstream:
    """The backend pool seen through one HTTP client."""

    def __init__(self, http: httpx.AsyncClient, pool: BackendPool, metrics: Metrics, tasks: TaskSet) -> None:
        self.http = http
        self.pool = pool
        self.metrics = metrics
        self.tasks = tasks  # holds stores still running after the answer went out

    async def _settle(self, store: Awaitable[None]) -> None:
        """Let a cache store finish, but never keep the client waiting more than STORE_WAIT for it
        (a slow or hung Redis): past that it finishes in the background."""
        await asyncio.wait({self.tasks.spawn(store)}, timeout=STORE_WAIT)

    async def forward(
        self, path: str, endpoint: str, body: dict[str, Any], client_headers: Iterable[tuple[str, str]],
        info: dict[str, str], policy: LoadPolicy, on_complete: OnComplete | None,
    ) -> Response:
        """Send to the best backend for the body's compute profile (controller.backends profile
        pools), the next one on a connection error; 503 when none answers or none serves it."""
        headers = [(k, v) for k, v in client_headers if k.lower() not in HOP_HEADERS]
        xargs = body.get("vllm_xargs") or {}
        asked = str(xargs.get(PROFILE_XARG, FULL_PROFILE))
        route = self.pool.route(policy, asked)
        if not route:
            return oai.error(503, f"no backend serves compute profile {asked!r} (or full instead): "
                             f"backends serve {self._served()}", "service_unavailable")
        for backend, runs in route:
            sent = body if runs == asked else {**body, "vllm_xargs": {**xargs, PROFILE_XARG: runs}}
            lease = Lease(backend)
            try:
                upstream = await self.http.send(
                    self.http.build_request("POST", backend.url + path, json=sent, headers=headers), stream=True)
            except httpx.HTTPError as exc:
                lease.release()
                self.pool.failed(backend)
                self.metrics.upstream_errors.labels(backend.url).inc()
                log.warning("backend %s failed (%s: %s), trying the next one", backend.url, type(exc).__name__, exc)
                continue
            self.pool.succeeded(backend)
            headers_out = info | {"x-backend": backend.url, "x-adaptive-profile": runs}
            if body.get("stream") and upstream.status_code == 200:
                return StreamingResponse(self._relay(lease, upstream, endpoint, on_complete, runs), status_code=200,
                                         media_type="text/event-stream", headers=headers_out)
            try:
                raw = await upstream.aread()
            except httpx.HTTPError as exc:  # died or stalled while sending its body
                self.pool.failed(backend)
                self.metrics.upstream_errors.labels(backend.url).inc()
                log.warning("backend %s broke off its answer (%s)", backend.url, type(exc).__name__)
                return oai.error(502, f"the backend failed while answering ({type(exc).__name__})", "upstream_error")
            finally:
                await upstream.aclose()
                lease.release()
            if upstream.status_code == 200 and on_complete is not None:
                try:
                    parsed = json.loads(raw)
                except ValueError:
                    parsed = None
                if isinstance(parsed, dict):
                    await self._settle(on_complete(parsed, runs))
            return Response(raw, status_code=upstream.status_code, headers=headers_out,
                            media_type=upstream.headers.get("content-type", "application/json"))
        return oai.error(503, "no backend is reachable", "service_unavailable")

    async def _relay(self, lease: Lease, upstream: httpx.Response, endpoint: str,
                     on_complete: OnComplete | None, runs: str) -> AsyncIterator[bytes]:
        """Pass a backend's SSE stream through; hand it on only if it finished normally."""
        assembler = oai.StreamAssembler(endpoint)
        try:
            async for chunk in upstream.aiter_raw():
                assembler.feed(chunk)
                yield chunk
        except httpx.HTTPError as exc:
            log.warning("stream from %s broke off: %s: %s", lease.backend.url, type(exc).__name__, exc)
            self.pool.failed(lease.backend)
            self.metrics.upstream_errors.labels(lease.backend.url).inc()
            # Close any half-sent event first, then end the stream the way vLLM ends a failed one.
            yield b"\n\n" + oai.sse({"error": {"message": f"the backend failed mid-stream ({type(exc).__name__})",
                                               "type": "upstream_error", "param": None, "code": 502}})
            yield oai.sse("[DONE]")
            return
        finally:
            await upstream.aclose()
            lease.release()
        if on_complete is not None and assembler.complete:
            await self._settle(on_complete(assembler.response(), runs))

    def _served(self) -> str:
        return "; ".join(f"{b.url}: {'any' if b.serves is None else ','.join(sorted(b.serves))}"
                         for b in self.pool.backends)

    async def models(self, policy: LoadPolicy) -> Response:
        """The backends' model list, each model annotated with its backend's plugin status."""
        for backend in self.pool.order(policy):
            try:
                listing = await self.http.get(backend.url + "/v1/models")
                status = await self.http.get(backend.url + STATUS_PATH)
            except httpx.HTTPError:
                self.pool.failed(backend)
                continue
            if listing.status_code != 200:
                continue
            data = listing.json()
            plugin = status.json() if status.status_code == 200 else {"active": False}
            for card in data.get("data", []):
                card["adaptive"] = {"active": plugin.get("active", False), "backend": backend.url,
                                    "workers": plugin.get("workers", [])}
            return JSONResponse(data)
        return oai.error(503, "no backend is reachable", "service_unavailable")
