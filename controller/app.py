"""The controller's HTTP service: wiring only.

Where things live: controller.plan (what happens to a request: pure), controller.proxy (the
request path that carries the plan out), controller.upstream (backends: forward, fail over,
relay), controller.admin (/admin/*, one token guard), controller.service (the running state and
reload), controller.snapshot (the policy in force, immutable).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from fastapi import FastAPI, Request
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError

from controller import admin, load_monitor, proxy, upstream
from controller.backends import BackendPool
from controller.breaker import GuardedRedis
from controller.cache import SemanticCache
from controller.embeddings import Encoder
from controller.feed import ChangeFeed
from controller.metrics import Metrics
from controller.service import Controller, Settings
from controller.snapshot import build_snapshot
from controller.tasks import TaskSet

log = logging.getLogger("controller")

async def connect(url: str) -> aioredis.Redis | RedisCluster:
    """A client for `url`: a Redis Cluster if the node says it is one, else a single Redis."""
    options = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0}
    probe = aioredis.Redis.from_url(url, **options)
    try:
        clustered = (await probe.info("cluster")).get("cluster_enabled") == 1
    except RedisError:
        clustered = False  # unreachable now: a single node is assumed (the breaker copes)
    finally:
        await probe.aclose()
    if clustered:
        log.info("Redis at %s is a cluster: using the cluster client", url)
        # No client-side retries: the per-node breakers are the retry policy (the client's own
        # retries with back-off held up every shard's commands while one master was down).
        return RedisCluster.from_url(url, retry=Retry(NoBackoff(), 0), **options)
    return aioredis.Redis.from_url(url, **options)


def create_app(settings: Settings, encoder: Encoder) -> FastAPI:
    """Build the ASGI app; the policy file is validated before anything starts."""
    snapshot = build_snapshot(settings.config_path, encoder)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics = Metrics()

        raw = await connect(settings.redis_url)
        feed = ChangeFeed(raw, settings.cache_prefix)
        guarded = GuardedRedis(raw, settings.redis_timeout, on_trip=metrics.redis_breaker_trips.inc)
        cache = SemanticCache(guarded, snapshot.config, encoder.dim, settings.cache_prefix, feed)
        try:
            loaded = await cache.rebuild()
            log.info("semantic cache rebuilt from Redis: %d entries", loaded)
        except RedisError as exc:  # serve uncached rather than not at all
            log.error("Redis unreachable at start-up, starting with an empty cache: %s", exc)
        async with httpx.AsyncClient(timeout=upstream.timeout(settings.upstream_timeout)) as http:
            pool = BackendPool(settings.backends)
            tasks = TaskSet()
            ctl = app.state.ctl = Controller(settings, encoder, snapshot, cache, pool,
                                             upstream.Upstream(http, pool, metrics, tasks), metrics, tasks)
            monitor = asyncio.create_task(load_monitor.run(
                http, pool, lambda: ctl.snapshot.config.load_policy.scrape_interval_seconds, ctl.on_scrape))
            follower = asyncio.create_task(feed.follow(cache.apply, cache.resync))
            def on_sighup() -> None:
                tasks.spawn(ctl.reload_logged())

            try:  # SIGHUP reloads the policy file (only possible in the main thread)
                asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, on_sighup)
            except (RuntimeError, ValueError):
                log.info("SIGHUP reload unavailable outside the main thread; use POST /admin/reload")
            yield
            monitor.cancel()
            follower.cancel()
            await ctl.embedder.close()
        await raw.aclose()

    app = FastAPI(title="adaptive-controller", lifespan=lifespan)
    app.include_router(admin.router)

    @app.exception_handler(admin.AdminDenied)
    async def admin_denied(request: Request, exc: admin.AdminDenied) -> Response:
        return exc.response

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await proxy.handle(request.app.state.ctl, request, "chat")

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await proxy.handle(request.app.state.ctl, request, "completions")

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        ctl: Controller = request.app.state.ctl
        return await ctl.upstream.models(ctl.snapshot.config.load_policy)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        ctl: Controller = request.app.state.ctl
        for name, index in ctl.cache.indexes.items():
            ctl.metrics.entries.labels(name).set(len(index.entries))
            ctl.metrics.evictions.labels(name).set(index.quota_evictions)
            ctl.metrics.verifier_rejections.labels(name).set(ctl.cache.rejections.get(name, 0))
        for name, s in ctl.shadow.categories.items():
            ctl.metrics.shadow_checks.labels(name).set(s.total_checks)
            ctl.metrics.shadow_false_hits.labels(name).set(s.total_false_hits)
            ctl.metrics.shadow_false_hit_rate.labels(name).set(s.rate)
            ctl.metrics.shadow_false_hit_upper.labels(name).set(s.upper)
            ctl.metrics.shadow_threshold_offset.labels(name).set(s.offset)
        ctl.metrics.redis_breaker_open.set(int(ctl.cache.redis.is_open))
        ctl.metrics.redis_fast_failures.set(ctl.cache.redis.fast_failures)
        return Response(generate_latest(ctl.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
