"""The controller's HTTP service: an OpenAI-compatible proxy with a semantic cache.

Request flow (chat and completions alike):
  parse -> cache key (tenant, partition, query) -> category (header or classifier)
  -> lookup (unless uncacheable / `Cache-Control: no-cache`) -> hit: answer from cache
  -> miss: least-loaded backend, with the category's compute profile attached
  -> store the answer (unless `Cache-Control: no-store`, an error, or a cut stream).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import redis.asyncio as aioredis
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from controller import load_monitor
from controller import openai_format as oai
from controller.backends import Backend, BackendPool
from controller.cache import SemanticCache
from controller.classifier import Classifier
from controller.embeddings import Encoder
from controller.keys import CacheKey, cache_key, tenant_of
from controller.metrics import Metrics
from policies.load import Decision, decide, fleet_pressure, load_score, next_level
from policies.schema import PolicyConfig, PolicyError, parse_policies

log = logging.getLogger("controller")

CATEGORY_HEADER = "x-adaptive-category"
PROFILE_XARG = "adaptive_profile"
UPSTREAM_TIMEOUT = httpx.Timeout(connect=2.0, read=300.0, write=30.0, pool=5.0)


def load_policies(path: Path) -> PolicyConfig:
    """Read and validate a policy file (errors name the file, line and field)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(str(path), [(None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_policies(text, str(path))


@dataclass
class Settings:
    """How one controller process is wired."""

    config_path: Path
    backends: list[str]
    redis_url: str
    admin_token: str | None = None
    cache_prefix: str = "va"


@dataclass
class State:
    """Everything a request handler needs; swapped atomically on reload."""

    settings: Settings
    encoder: Encoder
    config: PolicyConfig
    classifier: Classifier
    cache: SemanticCache
    pool: BackendPool
    http: httpx.AsyncClient
    metrics: Metrics = field(default_factory=Metrics)
    level: int = 0
    pressure: float = 0.0

    def decision(self, category: str) -> Decision:
        """The category's threshold, TTL and compute profile at the current load level."""
        levels = len(self.config.load_policy.level_thresholds)
        return decide(self.config.category(category).policy, min(self.level, levels), levels)

    def on_scrape(self) -> None:
        """Fresh backend loads: move the fleet's load level (with hysteresis) and publish it."""
        policy = self.config.load_policy
        loads = self.pool.loads()
        self.pressure = fleet_pressure(loads, policy)
        self.level = next_level(self.level, self.pressure, policy)
        self.metrics.load_level.set(self.level)
        self.metrics.fleet_pressure.set(self.pressure)
        for backend, load in zip(self.pool.backends, loads):
            self.metrics.backend_score.labels(backend.url).set(load_score(load, policy))
        for cat in self.config.categories:
            d = self.decision(cat.name)
            self.metrics.effective_threshold.labels(cat.name).set(d.threshold)
            self.metrics.effective_ttl.labels(cat.name).set(d.ttl_seconds)
            for profile in {cat.policy.compute_profile, *cat.policy.load.profile_ladder}:
                self.metrics.effective_profile.labels(cat.name, profile).set(int(profile == d.compute_profile))

    def effective(self) -> dict[str, Any]:
        """What is in force now and the load that caused it (for /admin/effective)."""
        now = time.monotonic()
        return {
            "level": self.level, "pressure": self.pressure,
            "backends": [
                {"url": b.url, "waiting": b.waiting, "running": b.running, "kv_usage": b.kv_usage,
                 "in_flight": b.in_flight, "up": b.up(now), "scrape_age_seconds": now - b.scraped_at,
                 "score": _finite(load_score(b.load(now), self.config.load_policy))}
                for b in self.pool.backends
            ],
            "categories": {c.name: vars(self.decision(c.name)) for c in self.config.categories},
        }

    async def reload(self) -> None:
        """Re-read the policy file; an invalid file raises and leaves the running policy as is."""
        config = load_policies(self.settings.config_path)
        classifier = Classifier(config, self.encoder)
        await self.cache.reconfigure(config)
        self.config, self.classifier = config, classifier
        log.info("policies reloaded from %s", self.settings.config_path)

    async def reload_logged(self) -> None:
        """Reload for SIGHUP: nobody to answer, so a refused file is logged."""
        try:
            await self.reload()
        except PolicyError as exc:
            log.error("reload refused, old policy still active:\n%s", exc)


def create_app(settings: Settings, encoder: Encoder) -> FastAPI:
    """Build the ASGI app; the policy file is validated before anything starts."""
    config = load_policies(settings.config_path)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=2.0, socket_connect_timeout=2.0)
        cache = SemanticCache(client, config, encoder.dim, settings.cache_prefix)
        try:
            loaded = await cache.rebuild()
            log.info("semantic cache rebuilt from Redis: %d entries", loaded)
        except RedisError as exc:  # serve uncached rather than not at all
            log.error("Redis unreachable at start-up, starting with an empty cache: %s", exc)
        async with httpx.AsyncClient(timeout=UPSTREAM_TIMEOUT) as http:
            state = app.state.s = State(
                settings, encoder, config, Classifier(config, encoder), cache,
                BackendPool(settings.backends), http,
            )
            monitor = asyncio.create_task(load_monitor.run(
                http, state.pool, lambda: state.config.load_policy.scrape_interval_seconds, state.on_scrape))
            reloads: set[asyncio.Task] = set()  # keep SIGHUP reload tasks referenced until done

            def on_sighup() -> None:
                task = asyncio.ensure_future(state.reload_logged())
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            try:  # SIGHUP reloads the policy file (only possible in the main thread)
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
            except (RuntimeError, ValueError):
                log.info("SIGHUP reload unavailable outside the main thread; use POST /admin/reload")
            yield
            monitor.cancel()
        await client.aclose()

    app = FastAPI(title="adaptive-controller", lifespan=lifespan)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _proxy(request.app.state.s, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _proxy(request.app.state.s, request, "completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        return await _models(request.app.state.s)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        s: State = request.app.state.s
        for name, index in s.cache.indexes.items():
            s.metrics.entries.labels(name).set(len(index.entries))
            s.metrics.evictions.labels(name).set(index.quota_evictions)
        return Response(generate_latest(s.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/invalidate")
    async def invalidate(request: Request) -> Response:
        s: State = request.app.state.s
        if (denied := _admin_denied(s, request)) is not None:
            return denied
        body = await _json_body(request) if await request.body() else {}
        if not isinstance(body, dict):
            return oai.error(400, "body must be a JSON object with optional 'category' and 'tenant'")
        category, tenant = body.get("category"), body.get("tenant")
        if category is not None and category not in s.cache.indexes:
            return oai.error(404, f"unknown category {category!r}", param="category")
        # `tenant` is the credential as the client sends it; we only ever store its hash.
        tenant_hash = tenant_of({"x": tenant}, "x") if tenant is not None else None
        removed = await s.cache.invalidate(category, tenant_hash)
        return JSONResponse({"invalidated": removed, "category": category, "tenant": tenant is not None})

    @app.get("/admin/effective")
    async def effective(request: Request) -> Response:
        s: State = request.app.state.s
        if (denied := _admin_denied(s, request)) is not None:
            return denied
        return JSONResponse(s.effective())

    @app.post("/admin/reload")
    async def reload(request: Request) -> Response:
        s: State = request.app.state.s
        if (denied := _admin_denied(s, request)) is not None:
            return denied
        try:
            await s.reload()
        except PolicyError as exc:
            return oai.error(422, f"reload refused, old policy still active:\n{exc}")
        return JSONResponse({"reloaded": True, "categories": [c.name for c in s.config.categories]})

    return app


def _finite(x: float) -> float | None:
    """JSON has no infinity: a dead or silent backend's score is reported as null."""
    return None if math.isinf(x) else x


def _admin_denied(s: State, request: Request) -> Response | None:
    token = s.settings.admin_token
    if not token:
        return oai.error(403, "admin endpoints are disabled (start with --admin-token)", "permission_error")
    given = request.headers.get("x-admin-token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        return oai.error(401, "missing or wrong X-Admin-Token", "authentication_error")
    return None


async def _json_body(request: Request) -> Any:
    try:
        return json.loads(await request.body())
    except ValueError:
        return None


def _cache_control(request: Request) -> set[str]:
    return {d.strip().lower() for d in request.headers.get("cache-control", "").split(",") if d.strip()}


async def _proxy(s: State, request: Request, endpoint: str) -> Response:
    body = await _json_body(request)
    if not isinstance(body, dict):
        return oai.error(400, "request body must be a JSON object")
    if endpoint == "chat" and not isinstance(body.get("messages"), list):
        return oai.error(400, "'messages' must be a list", param="messages")
    if endpoint == "completions" and "prompt" not in body:
        return oai.error(400, "'prompt' is required", param="prompt")
    headers = {k.lower(): v for k, v in request.headers.items()}
    config = s.config
    key = cache_key(endpoint, body, headers, config.tenant_header, config.history_window)

    vector: np.ndarray | None = None
    explicit = headers.get(CATEGORY_HEADER)
    if explicit is not None:
        if explicit not in s.cache.indexes:
            return oai.error(400, f"unknown category {explicit!r} in {CATEGORY_HEADER}", param=CATEGORY_HEADER)
        category = explicit
    elif key is not None:
        vector = await _embed(s, key.query)
        category, _ = s.classifier.classify(key.query, vector)
    else:
        category = config.default_category
    policy = config.category(category).policy
    decision = s.decision(category)

    directives = _cache_control(request)
    reason = _uncacheable(key, policy.cacheable, policy.cache_sampled, body)
    read = reason is None and "no-cache" not in directives
    write = reason is None and "no-store" not in directives
    if reason is None and not read:
        reason = "no-cache"
    info = {"x-cache-category": category, "x-adaptive-profile": decision.compute_profile,
            "x-load-level": str(decision.level)}

    if read:
        assert key is not None
        vector = vector if vector is not None else await _embed(s, key.query)
        s.metrics.lookups.labels(category).inc()
        t0 = time.perf_counter()
        hit = await s.cache.lookup(category, key.partition, vector, decision.threshold)
        s.metrics.lookup_seconds.labels(category, "hit" if hit else "miss").observe(time.perf_counter() - t0)
        if hit is not None:
            s.metrics.hits.labels(category).inc()
            s.metrics.hit_similarity.labels(category).observe(hit.similarity)
            info |= {"x-cache": "HIT", "x-cache-similarity": f"{hit.similarity:.4f}"}
            response = oai.fresh_copy(hit.response)
            if body.get("stream"):
                return StreamingResponse(_iter(oai.replay_stream(endpoint, response)), media_type="text/event-stream", headers=info)
            return JSONResponse(response, headers=info)
        s.metrics.misses.labels(category).inc()
        info["x-cache"] = "MISS"
    else:
        s.metrics.bypass.labels(category, reason or "no-cache").inc()
        info["x-cache"] = "BYPASS"

    store = None
    if write:
        assert key is not None
        vector = vector if vector is not None else await _embed(s, key.query)
        store = _Store(s, category, key, vector, decision.ttl_seconds, decision.compute_profile)
    upstream_body = dict(body)
    xargs = dict(upstream_body.get("vllm_xargs") or {})
    xargs.setdefault(PROFILE_XARG, decision.compute_profile)
    upstream_body["vllm_xargs"] = xargs
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    return await _forward(s, path, endpoint, upstream_body, request, info, store)


def _uncacheable(key: CacheKey | None, cacheable: bool, cache_sampled: bool, body: dict) -> str | None:
    """Why a request must not use the cache, or None."""
    if key is None:
        return "shape"
    if not cacheable:
        return "policy"
    if key.temperature > 0 and not cache_sampled:
        return "sampled"
    if (body.get("n") or 1) != 1:
        return "n"
    return None


async def _embed(s: State, text: str) -> np.ndarray:
    t0 = time.perf_counter()
    vector = (await asyncio.to_thread(s.encoder.encode, [text]))[0]
    s.metrics.embed_seconds.observe(time.perf_counter() - t0)
    return vector


@dataclass
class _Store:
    """A pending cache write, done once the backend's answer is complete."""

    s: State
    category: str
    key: CacheKey
    vector: np.ndarray
    ttl: int
    profile: str

    async def __call__(self, response: dict[str, Any]) -> None:
        choices = response.get("choices") or []
        if not choices or any(c.get("finish_reason") in (None, "abort", "error") for c in choices):
            return
        stored = await self.s.cache.store(
            self.category, self.key.partition, self.key.tenant, self.vector, self.key.query,
            response, self.ttl, {"profile": self.profile, "model": str(response.get("model", ""))},
        )
        if stored:
            self.s.metrics.stores.labels(self.category).inc()


_HOP_HEADERS = {"host", "content-length", "connection", "transfer-encoding", "accept-encoding", CATEGORY_HEADER, "cache-control", "x-admin-token"}


async def _forward(
    s: State, path: str, endpoint: str, body: dict, request: Request, info: dict[str, str], store: _Store | None,
) -> Response:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP_HEADERS}
    for backend in s.pool.order(s.config.load_policy):
        backend.in_flight += 1
        try:
            upstream = await s.http.send(
                s.http.build_request("POST", backend.url + path, json=body, headers=headers), stream=True
            )
        except httpx.HTTPError as exc:
            backend.in_flight -= 1
            s.pool.failed(backend)
            s.metrics.upstream_errors.labels(backend.url).inc()
            log.warning("backend %s failed (%s), trying the next one", backend.url, exc)
            continue
        s.pool.succeeded(backend)
        info = info | {"x-backend": backend.url}
        if body.get("stream") and upstream.status_code == 200:
            return StreamingResponse(
                _relay(s, backend, upstream, endpoint, store), status_code=200,
                media_type="text/event-stream", headers=info,
            )
        try:
            raw = await upstream.aread()
        finally:
            await upstream.aclose()
            backend.in_flight -= 1
        if upstream.status_code == 200 and store is not None:
            try:
                await store(json.loads(raw))
            except ValueError:
                pass
        return Response(raw, status_code=upstream.status_code, headers=info,
                        media_type=upstream.headers.get("content-type", "application/json"))
    return oai.error(503, "no backend is reachable", "service_unavailable")


async def _relay(s: State, backend: Backend, upstream: httpx.Response, endpoint: str, store: _Store | None) -> AsyncIterator[bytes]:
    """Pass a backend's SSE stream through, caching it only if it finished normally."""
    assembler = oai.StreamAssembler(endpoint)
    try:
        async for chunk in upstream.aiter_raw():
            assembler.feed(chunk)
            yield chunk
    except httpx.HTTPError as exc:
        log.warning("stream from %s broke off: %s", backend.url, exc)
        return
    finally:
        await upstream.aclose()
        backend.in_flight -= 1
    if store is not None and assembler.complete:
        await store(assembler.response())


async def _iter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


async def _models(s: State) -> Response:
    """The backends' model list, each model annotated with its backend's plugin status."""
    for backend in s.pool.order(s.config.load_policy):
        try:
            listing = await s.http.get(backend.url + "/v1/models")
            status = await s.http.get(backend.url + "/v1/adaptive/status")
        except httpx.HTTPError:
            s.pool.failed(backend)
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
