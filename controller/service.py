"""The controller's running state: the policy snapshot in force, the cache, the backends, the load.

Everything here is wiring of long-lived parts; request decisions live in controller.plan,
backend traffic in controller.upstream, the request path in controller.proxy.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from controller.backends import BackendPool
from controller.cache import SemanticCache
from controller.embed_batch import EmbedBatcher
from controller.embeddings import Encoder
from controller.load_monitor import LoadTracker
from controller.metrics import Metrics
from controller.shadow import ShadowMonitor
from controller.snapshot import PolicySnapshot, build_snapshot
from controller.tasks import TaskSet
from controller.upstream import Upstream
from policies.schema import PolicyError

log = logging.getLogger("controller")


@dataclass
class Settings:
    """How one controller process is wired."""

    config_path: Path
    backends: list[str]
    redis_url: str
    admin_token: str | None = None
    cache_prefix: str = "va"
    upstream_timeout: float = 120.0  # longest silence accepted from a backend (controller.upstream)
    max_body_bytes: int = 8 << 20  # larger request bodies get 413
    redis_timeout: float = 0.5  # deadline of one Redis round-trip before the breaker opens
    embed_deadline: float = 0.1  # a query not embedded by then is a cache miss (controller.embed_batch)
    embed_max_batch: int = 32  # most queries encoded together
    embed_workers: int = 4  # encoder threads; two per core keep both busy through the Python between encodes


class Controller:
    """Long-lived parts of one controller process; `snapshot` is replaced whole on reload."""

    def __init__(self, settings: Settings, encoder: Encoder, snapshot: PolicySnapshot, cache: SemanticCache,
                 pool: BackendPool, upstream: Upstream, metrics: Metrics, tasks: TaskSet) -> None:
        self.settings = settings
        self.encoder = encoder
        self.embedder = EmbedBatcher(encoder, settings.embed_max_batch, settings.embed_deadline,
                                     settings.embed_workers, metrics.embed_batch_size.observe)
        self.snapshot = snapshot
        self.cache = cache
        self.pool = pool
        self.upstream = upstream
        self.metrics = metrics
        self.load = LoadTracker()
        self.shadow = ShadowMonitor()  # per-category evidence from shadow checks, kept across reloads
        self.tasks = tasks  # work that runs on after a response (shadow checks, reloads)

    def on_scrape(self) -> None:
        """Fresh backend loads (called by the load monitor after each round of scrapes)."""
        self.load.observe(self.pool, self.snapshot, self.metrics)

    async def embed(self, text: str) -> np.ndarray | None:
        """The query's embedding, batched with concurrent queries off the event loop; None when it
        missed the deadline (the request then bypasses the cache, controller.plan)."""
        t0 = time.perf_counter()
        vector = await self.embedder.embed(text)
        self.metrics.embed_seconds.observe(time.perf_counter() - t0)
        if vector is None:
            self.metrics.embed_misses.inc()
        return vector

    async def reload(self) -> PolicySnapshot:
        """Re-read the policy file; an invalid file raises and leaves the running policy as is."""
        snapshot = build_snapshot(self.settings.config_path, self.encoder)
        await self.cache.reconfigure(snapshot.config)  # new categories get an index before use
        self.snapshot = snapshot
        self.load.clamp(snapshot)
        log.info("policies reloaded from %s", self.settings.config_path)
        return snapshot

    async def reload_logged(self) -> None:
        """Reload for SIGHUP: nobody to answer, so a refused file is logged."""
        try:
            await self.reload()
        except PolicyError as exc:
            log.error("reload refused, old policy still active:\n%s", exc)
