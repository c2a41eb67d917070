"""Circuit breakers in front of Redis: when Redis is away or hung, the cache steps aside at once.

Without them every request would wait for the client's socket timeout (a hung Redis answered
nothing for 2 s a request). Each Redis operation gets a short deadline; a failure or a missed
deadline opens the breaker, and while it is open every operation fails at once with
`BreakerOpen` (a RedisError, which the cache already turns into a miss / an answer not
stored). After `cooldown` seconds one probe is let through (half-open): success closes the
breaker, failure opens it again with the cooldown doubled (up to `max_cooldown`).

On a Redis Cluster there is one breaker per master node (found from the keys an operation
touches), so a dead master stops only the traffic for its own slots: entries on the other
shards are still served, and the breaker of the promoted replica starts closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from redis.exceptions import RedisError

log = logging.getLogger("controller.breaker")
T = TypeVar("T")


class BreakerOpen(RedisError):
    """Redis (or the node that holds these keys) is considered unavailable; nothing was sent."""


class CircuitBreaker:
    """Closed -> (failure) -> open for `cooldown` s -> half-open (one probe) -> closed or open."""

    def __init__(self, name: str = "redis", cooldown: float = 1.0, max_cooldown: float = 30.0,
                 on_trip: Callable[[], None] | None = None) -> None:
        self.name = name
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.open_until = 0.0  # monotonic; 0 = closed
        self.probing = False
        self.fast_failures = 0
        self._on_trip = on_trip or (lambda: None)

    @property
    def is_open(self) -> bool:
        return self.open_until > 0.0

    def admit(self) -> bool:
        """May an operation go through now? Raises BreakerOpen if not; True if it is the probe."""
        if not self.is_open:
            return False
        if self.probing or time.monotonic() < self.open_until:
            self.fast_failures += 1
            raise BreakerOpen(f"Redis circuit breaker for {self.name} is open")
        self.probing = True
        return True

    def failed(self, exc: BaseException) -> None:
        self.probing = False
        if self.is_open:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
        else:
            log.error("Redis %s failed (%s: %s): cache bypassed for it; probing again in %.1f s",
                      self.name, type(exc).__name__, exc, self.cooldown)
            self._on_trip()
        self.open_until = time.monotonic() + self.cooldown

    def succeeded(self) -> None:
        self.probing = False
        if self.is_open:
            log.warning("Redis %s answers again: cache back in service", self.name)
        self.open_until = 0.0
        self.cooldown = self.base_cooldown


async def guarded(breakers: list[CircuitBreaker], op: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run one Redis round-trip under `breakers` (all must admit it) and a deadline."""
    admitted: list[CircuitBreaker] = []
    try:
        for breaker in breakers:
            breaker.admit()
            admitted.append(breaker)
    except BreakerOpen:
        for breaker in admitted:
            breaker.probing = False
        raise
    try:
        result = await asyncio.wait_for(op(), timeout)
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        for breaker in breakers:
            breaker.failed(exc)
        raise BreakerOpen(f"Redis operation failed: {type(exc).__name__}: {exc}") from exc
    for breaker in breakers:
        breaker.succeeded()
    return result


class GuardedPipeline:
    """A Redis pipeline whose `execute` runs under the breakers of the keys it touches
    (commands are only buffered until then)."""

    def __init__(self, pipe: Any, redis: GuardedRedis) -> None:
        self._pipe = pipe
        self._redis = redis
        self._keys: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._pipe, name)
        if not callable(attr):
            return attr

        def buffered(*args: Any, **kwargs: Any) -> GuardedPipeline:
            if args:
                self._keys.append(args[0])
            attr(*args, **kwargs)
            return self
        return buffered

    async def execute(self) -> list[Any]:
        async def run() -> list[Any]:
            try:
                return await self._pipe.execute()
            finally:
                await self._pipe.reset()
        # A big pipeline (a rebuild reads 1000 documents at once) gets time in proportion.
        timeout = max(self._redis.timeout, 0.002 * len(self._keys))
        return await guarded(self._redis.breakers_for(self._keys), run, timeout)


class GuardedRedis:
    """The asyncio Redis (or Redis Cluster) client with every round-trip under circuit breakers."""

    def __init__(self, client: Any, timeout: float = 0.5, on_trip: Callable[[], None] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.cluster = hasattr(client, "get_node_from_key")
        self._on_trip = on_trip
        self.breakers: dict[str, CircuitBreaker] = {}

    def _breaker(self, name: str) -> CircuitBreaker:
        if name not in self.breakers:
            self.breakers[name] = CircuitBreaker(name, on_trip=self._on_trip)
        return self.breakers[name]

    def breakers_for(self, keys: list[Any]) -> list[CircuitBreaker]:
        """The breakers of the nodes that hold `keys` (one breaker for a single Redis)."""
        if not self.cluster:
            return [self._breaker("redis")]
        names = set()
        for key in keys:
            try:
                names.add(self.client.get_node_from_key(key).name)
            except Exception:  # slot map not loaded yet
                names.add("cluster")
        return [self._breaker(n) for n in sorted(names or {"cluster"})]

    @property
    def is_open(self) -> bool:
        return any(b.is_open for b in self.breakers.values())

    @property
    def fast_failures(self) -> int:
        return sum(b.fast_failures for b in self.breakers.values())

    def pipeline(self, transaction: bool = False) -> GuardedPipeline:
        return GuardedPipeline(self.client.pipeline(transaction=transaction), self)

    async def scan_iter(self, match: str, count: int = 1000) -> AsyncIterator[Any]:
        """SCAN page by page, each page a guarded round-trip (a long scan is not one deadline);
        on a cluster, the client's own scan over every master."""
        if self.cluster:
            async for key in self.client.scan_iter(match=match, count=count):
                yield key
            return
        cursor: Any = 0
        while True:
            cursor, keys = await guarded(self.breakers_for([]), lambda c=cursor: self.client.scan(
                c, match=match, count=count), max(self.timeout, 2.0))
            for key in keys:
                yield key
            if cursor == 0:
                return

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            return await guarded(self.breakers_for(list(args[:1])), lambda: attr(*args, **kwargs), self.timeout)
        return call

    async def aclose(self) -> None:
        await self.client.aclose()
