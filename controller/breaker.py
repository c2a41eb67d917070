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


async def guarded(breaker: CircuitBreaker, op: Callable[[], Awaitable[T]], timeout: float) -> T:
    """Run one Redis round-trip under `breaker` (it must admit it) and a deadline."""
    breaker.admit()
    try:
        result = await asyncio.wait_for(op(), timeout)
    except (RedisError, OSError, asyncio.TimeoutError) as exc:
        breaker.failed(exc)
        raise BreakerOpen(f"Redis operation failed: {type(exc).__name__}: {exc}") from exc
    breaker.succeeded()
    return result


class GuardedPipeline:
    """A Redis pipeline under the breakers of the nodes its keys live on.

    Commands are recorded and sent on `execute`. On a cluster they are sent as one sub-pipeline
    per node, concurrently, each under its own node's breaker: a dead master fails only its own
    commands (and opens only its own breaker), not those of the healthy shards in the same batch.
    """

    def __init__(self, redis: GuardedRedis, transaction: bool) -> None:
        self._redis = redis
        self._transaction = transaction
        self._commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []

    def __getattr__(self, name: str) -> Callable[..., GuardedPipeline]:
        def buffered(*args: Any, **kwargs: Any) -> GuardedPipeline:
            self._commands.append((name, args, kwargs))
            return self
        return buffered

    async def _send(self, commands: list[tuple[str, tuple[Any, ...], dict[str, Any]]]) -> list[Any]:
        pipe = self._redis.client.pipeline(transaction=self._transaction)
        for name, args, kwargs in commands:
            getattr(pipe, name)(*args, **kwargs)
        try:
            return await pipe.execute()
        finally:
            await pipe.reset()

    async def execute(self) -> list[Any]:
        redis = self._redis
        groups: dict[str, list[int]] = {}
        for i, (_, args, _) in enumerate(self._commands):
            groups.setdefault(redis.node_of(args[0] if args else None), []).append(i)

        async def run(node: str, indexes: list[int]) -> list[Any]:
            # A big batch (a rebuild reads 1000 documents at once) gets time in proportion.
            timeout = max(redis.timeout, 0.002 * len(indexes))
            return await redis.guard(node, lambda: self._send([self._commands[i] for i in indexes]), timeout)

        outcomes = await asyncio.gather(*(run(n, ix) for n, ix in groups.items()), return_exceptions=True)
        results: list[Any] = [None] * len(self._commands)
        for (node, indexes), outcome in zip(groups.items(), outcomes):
            if isinstance(outcome, BaseException):
                raise outcome
            for i, value in zip(indexes, outcome):
                results[i] = value
        return results


class GuardedRedis:
    """The asyncio Redis (or Redis Cluster) client with every round-trip under circuit breakers."""

    def __init__(self, client: Any, timeout: float = 0.5, on_trip: Callable[[], None] | None = None) -> None:
        self.client = client
        self.timeout = timeout
        self.cluster = hasattr(client, "get_node_from_key")
        self._on_trip = on_trip
        self.breakers: dict[str, CircuitBreaker] = {}
        self._refreshed = 0.0
        self._refreshing: asyncio.Future | None = None

    def breaker(self, node: str) -> CircuitBreaker:
        if node not in self.breakers:
            self.breakers[node] = CircuitBreaker(node, on_trip=self._on_trip)
        return self.breakers[node]

    async def guard(self, node: str, op: Callable[[], Awaitable[T]], timeout: float) -> T:
        """One round-trip to `node` under its breaker; on a cluster, a failure also refreshes the slot
        map, so that once a replica is promoted the slots it took over are routed to it (and to its
        own, closed, breaker)."""
        try:
            return await guarded(self.breaker(node), op, timeout)
        except BreakerOpen:
            if self.cluster:
                self._refresh_slots()
            raise

    def _refresh_slots(self) -> None:
        """Re-read the cluster's slot map in the background, at most once a second while failures
        last (the request that saw the failure does not wait for it)."""
        now = time.monotonic()
        if now - self._refreshed < 1.0 or self._refreshing is not None:
            return
        self._refreshed = now

        async def refresh() -> None:
            try:
                await asyncio.wait_for(self.client.nodes_manager.initialize(), 5.0)
            except Exception as exc:  # no live node answered yet: a later failure tries again
                log.debug("cluster slot map refresh failed: %s", exc)
            finally:
                self._refreshing = None

        self._refreshing = asyncio.ensure_future(refresh())

    def node_of(self, key: Any) -> str:
        """The name of the node that holds `key` ("redis" for a single Redis)."""
        if not self.cluster:
            return "redis"
        try:
            return self.client.get_node_from_key(key).name
        except Exception:  # no key, or the slot map is not loaded yet
            return "cluster"

    @property
    def is_open(self) -> bool:
        return any(b.is_open for b in self.breakers.values())

    @property
    def fast_failures(self) -> int:
        return sum(b.fast_failures for b in self.breakers.values())

    def pipeline(self, transaction: bool = False) -> GuardedPipeline:
        return GuardedPipeline(self, transaction)

    async def scan_iter(self, match: str, count: int = 1000) -> AsyncIterator[Any]:
        """SCAN page by page, each page a guarded round-trip (a long scan is not one deadline);
        on a cluster, the client's own scan over every master."""
        if self.cluster:
            async for key in self.client.scan_iter(match=match, count=count):
                yield key
            return
        cursor: Any = 0
        while True:
            cursor, keys = await self.guard("redis", lambda c=cursor: self.client.scan(
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
            return await self.guard(self.node_of(args[0] if args else None), lambda: attr(*args, **kwargs),
                                    self.timeout)
        return call

    async def aclose(self) -> None:
        await self.client.aclose()
