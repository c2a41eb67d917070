"""Scrapes each backend's vLLM /metrics and keeps the fleet's load level current."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from controller.backends import Backend, BackendPool

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


async def run(
    http: httpx.AsyncClient, pool: BackendPool, interval: Callable[[], float], on_scrape: Callable[[], None]
) -> None:
    """Scrape all backends, call `on_scrape()`, wait `interval()` seconds (read each time, so a
    reloaded policy applies), forever."""
    while True:
        await asyncio.gather(*(scrape(http, b) for b in pool.backends))
        on_scrape()
        await asyncio.sleep(interval())
