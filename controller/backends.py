"""The vLLM servers behind the controller, their measured load, and which one gets the next miss.

Profile pools: a vLLM engine with the plugin serves the compute profiles it was started with
(`--adaptive-serve`; a compiled one compiles a view per profile, so a fleet may run one compiled
server per profile to keep start-up short), stock vLLM serves `full`. Each backend knows which
profiles it serves, declared with the URL (`http://host:8100#calibrated-2`, first name = its
default) or read from the plugin's status route (controller.load_monitor; a server without that
route is not constrained: declare `#full` for stock vLLM). A request asking for
profile P goes to a backend that serves P; when none of those is up, to one that runs `full`
instead (never more degraded than asked, only slower); never to a backend that would run another
degraded profile. What the backend really runs is what the response header and the cache record.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from controller.plan import FULL_PROFILE, PROFILE_NAME
from policies.load import BackendLoad, load_score
from policies.schema import LoadPolicy


@dataclass
class Backend:
    """One vLLM server: the gauges last scraped from its /metrics, plus our own in-flight count."""

    url: str
    #: profiles it serves (None: not known yet, assumed to serve whatever it is asked) and the one
    #: it runs for a request naming any other; `declared`: given with the URL, never rediscovered
    serves: frozenset[str] | None = None
    default_profile: str = FULL_PROFILE
    declared: bool = False
    profiles_read_at: float = -1e9  # monotonic time `serves` was last read from the backend
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

    def runs(self, profile: str) -> str | None:
        """The profile this backend runs for a request asking for `profile`: that one if it serves
        it, `full` if that is what it runs instead, None if it would run another degraded one."""
        if self.serves is None or profile in self.serves:
            return profile
        return FULL_PROFILE if self.default_profile == FULL_PROFILE else None


def parse_backend(spec: str) -> Backend:
    """`URL` or `URL#PROFILE[,PROFILE...]` (the profiles it serves, its default first)."""
    url, _, names = spec.partition("#")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"backend {spec!r}: the URL must start with http:// or https://")
    if not names:
        return Backend(url.rstrip("/"))
    profiles = [n.strip() for n in names.split(",")]
    bad = [n for n in profiles if not PROFILE_NAME.fullmatch(n)]
    if bad:
        raise ValueError(f"backend {spec!r}: {bad} are not profile names (letters, digits, '_', '-', '.')")
    return Backend(url.rstrip("/"), frozenset(profiles), profiles[0], declared=True)


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

    def __init__(self, specs: list[str], cooldown: float = 5.0) -> None:
        if not specs:
            raise ValueError("at least one --backend URL is required")
        self.backends = [parse_backend(s) for s in specs]
        self.cooldown = cooldown

    def order(self, policy: LoadPolicy) -> list[Backend]:
        """Backends to try, best first: by load score (dead and silent ones last)."""
        now = time.monotonic()
        return sorted(self.backends, key=lambda b: (not b.up(now), *self._busy(b, now, policy)))

    @staticmethod
    def _busy(backend: Backend, now: float, policy: LoadPolicy) -> tuple[float, int]:
        return load_score(backend.load(now), policy), backend.in_flight

    def route(self, policy: LoadPolicy, profile: str) -> list[tuple[Backend, str]]:
        """Backends to try for a request asking for `profile`, best first, each with the profile it
        would run: live ones serving it, then live ones running `full` instead, then the dead (by
        load score within each); backends that would run another degraded profile are left out."""
        now = time.monotonic()
        runs = [(b, b.runs(profile)) for b in self.backends]
        usable = [(b, p) for b, p in runs if p is not None]
        return sorted(usable, key=lambda bp: (not bp[0].up(now), bp[1] != profile, *self._busy(bp[0], now, policy)))

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
