"""The vLLM servers behind the controller, their measured load, and which one gets the next miss."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from policies.load import BackendLoad, load_score
from policies.schema import LoadPolicy


@dataclass
class Backend:
    """One vLLM server: the gauges last scraped from its /metrics, plus our own in-flight count."""

    url: str
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0
    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    # monotonic time of the last good scrape (start-up counts, so a backend that never
    # answers a scrape turns stale, i.e. saturated, after the policy's stale_after_seconds)
    scraped_at: float = field(default_factory=time.monotonic)

    def up(self, now: float) -> bool:
        return self.down_until <= now

    def load(self, now: float) -> BackendLoad:
        """This backend's load as the pure policy functions see it."""
        return BackendLoad(self.waiting, self.running, self.kv_usage, self.in_flight, now - self.scraped_at, self.up(now))


class Lease:
    """One request in flight on a backend: counted on creation, released exactly once.

    The in-flight count feeds the load score between scrapes, so a leak would make a backend
    look busier forever and a double release would make it look idle.
    """

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self._held = True
        backend.in_flight += 1

    def release(self) -> None:
        if self._held:
            self._held = False
            self.backend.in_flight -= 1


class BackendPool:
    """Routes misses to the backend with the lowest load score; a failing one sits out `cooldown` s."""

    def __init__(self, urls: list[str], cooldown: float = 5.0) -> None:
        if not urls:
            raise ValueError("at least one --backend URL is required")
        self.backends = [Backend(u.rstrip("/")) for u in urls]
        self.cooldown = cooldown

    def order(self, policy: LoadPolicy) -> list[Backend]:
        """Backends to try, best first: by load score (dead and silent ones last)."""
        now = time.monotonic()
        return sorted(self.backends, key=lambda b: (not b.up(now), load_score(b.load(now), policy), b.in_flight))

    def loads(self) -> list[BackendLoad]:
        now = time.monotonic()
        return [b.load(now) for b in self.backends]

    def failed(self, backend: Backend) -> None:
        """Take `backend` out of rotation for a while after a connection error or timeout."""
        backend.failures += 1
        backend.down_until = time.monotonic() + self.cooldown

    def succeeded(self, backend: Backend) -> None:
        backend.failures = 0
        backend.down_until = 0.0
