"""Scrapes each backend's vLLM /metrics and keeps the fleet's load level current; also reads
which compute profiles each backend serves (the plugin's status route) for profile pools."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.backends import Backend, BackendPool
from controller.metrics import Metrics
from controller.plan import FULL_PROFILE
from controller.snapshot import PolicySnapshot
from policies.load import fleet_pressure, load_score, next_level
from vllm_adaptive.endpoint import STATUS_PATH

log = logging.getLogger("controller.load")

#: vLLM gauge -> Backend attribute. `gpu_cache_usage_perc` is the deprecated name of
#: `kv_cache_usage_perc` (older vLLM releases); both are fractions in 0..1.
GAUGES = {
    "vllm:num_requests_waiting": "waiting",
    "vllm:num_requests_running": "running",
    "vllm:kv_cache_usage_perc": "kv_usage",
    "vllm:gpu_cache_usage_perc": "kv_usage",
}


def parse_vllm_metrics(text: str) -> dict[str, float]:
    """Sum of each load gauge over its label sets (one per model / engine)."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            attr = GAUGES.get(sample.name)
            if attr is not None:
                found[attr] = found.get(attr, 0.0) + float(sample.value)
    return found


async def scrape(http: httpx.AsyncClient, backend: Backend) -> bool:
    """Refresh one backend's gauges; False (and stale data) when it does not answer."""
    try:
        reply = await http.get(backend.url + "/metrics", timeout=2.0)
        reply.raise_for_status()
        values = parse_vllm_metrics(reply.text)
    except (httpx.HTTPError, ValueError) as exc:
        log.debug("scrape of %s failed: %s", backend.url, exc)
        return False
    for attr, value in values.items():
        setattr(backend, attr, value)
    backend.scraped_at = time.monotonic()
    return True


#: How often a backend's profiles are re-read from the plugin's status route.
PROFILES_REFRESH_SECONDS = 30.0


def served_profiles(status: dict) -> tuple[frozenset[str], str]:
    """(profiles served, default profile) from the plugin's status; a plugin with no profiles
    configured (or not active) runs every request in full. Every worker serves the same set."""
    workers = status.get("workers") or []
    table = workers[0].get("profiles") if status.get("active") and workers else None
    if not table:
        return frozenset({FULL_PROFILE}), FULL_PROFILE
    return frozenset(table["profiles"]), str(table["default"])


async def discover(http: httpx.AsyncClient, backend: Backend) -> None:
    """Refresh which profiles `backend` serves, unless declared with its URL. A server without the
    plugin's status route (stock vLLM, a proxy) is left unconstrained (`serves` None: it gets
    every profile asked; declare `#full` for stock vLLM); one that does not answer keeps its last."""
    if backend.declared or time.monotonic() - backend.profiles_read_at < PROFILES_REFRESH_SECONDS:
        return
    try:
        reply = await http.get(backend.url + STATUS_PATH, timeout=5.0)
        if reply.status_code == 404:
            serves, default = None, FULL_PROFILE
        else:
            serves, default = served_profiles(reply.raise_for_status().json())
    except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as exc:
        log.debug("profile status of %s not read: %s", backend.url, exc)
        return
    if (serves, default) != (backend.serves, backend.default_profile):
        log.info("backend %s serves profiles %s (default %r)", backend.url,
                 "any (no plugin status)" if serves is None else sorted(serves), default)
    backend.serves, backend.default_profile, backend.profiles_read_at = serves, default, time.monotonic()


class LoadTracker:
    """The fleet's load level (0 = normal) and the pressure that set it."""

    def __init__(self) -> None:
        self.level = 0
        self.pressure = 0.0
        self.rounds = 0  # scrape rounds observed (the first one follows start-up)

    def clamp(self, snap: PolicySnapshot) -> None:
        """A reloaded policy may have fewer levels: never stay above its last one."""
        self.level = min(self.level, snap.levels)

    def observe(self, pool: BackendPool, snap: PolicySnapshot, metrics: Metrics) -> None:
        """Fresh backend loads: move the level (with hysteresis) and publish what is in force."""
        policy = snap.config.load_policy
        loads = pool.loads()
        self.pressure = fleet_pressure(loads, policy)
        self.level = next_level(self.level, self.pressure, policy)  # clamps a level from a larger policy
        self.rounds += 1
        metrics.load_level.set(self.level)
        metrics.fleet_pressure.set(self.pressure)
        for backend, load in zip(pool.backends, loads):
            metrics.backend_score.labels(backend.url).set(load_score(load, policy))
        for cat in snap.config.categories:
            d = snap.decision(cat.name, self.level)
            metrics.effective_threshold.labels(cat.name).set(d.threshold)
            metrics.effective_ttl.labels(cat.name).set(d.ttl_seconds)
            for profile in {cat.policy.compute_profile, *cat.policy.load.profile_ladder}:
                metrics.effective_profile.labels(cat.name, profile).set(int(profile == d.compute_profile))


async def run(
    http: httpx.AsyncClient, pool: BackendPool, interval: Callable[[], float], on_scrape: Callable[[], None]
) -> None:
    """Scrape all backends, call `on_scrape()`, wait `interval()` seconds (read each time, so a
    reloaded policy applies), forever. An error in one round is logged and the loop goes on: a
    dead monitor would freeze the load level silently."""
    while True:
        try:
            await asyncio.gather(*(scrape(http, b) for b in pool.backends), *(discover(http, b) for b in pool.backends))
            on_scrape()
        except Exception:
            log.exception("load monitor round failed; retrying next interval")
        await asyncio.sleep(interval())
