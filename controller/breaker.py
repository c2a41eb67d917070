"""A circuit breaker in front of Redis: when Redis is away or hung, the cache steps aside at once.

Without it every request would wait for the client's socket timeout (a hung Redis answered
nothing for 2 s a request). Each Redis operation gets a short deadline; a failure or a missed
deadline opens the breaker, and while it is open every operation fails at once with
`BreakerOpen` (a RedisError, which the cache already turns into a miss / an answer not
stored). After `cooldown` seconds one probe is let through (half-open): success closes the
breaker, failure opens it again with the cooldown doubled (up to `max_cooldown`).
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
    """Redis is considered unavailable right now; nothing was sent."""


class CircuitBreaker:
    """Closed -> (failure) -> open for `cooldown` s -> half-open (one probe) -> closed or open."""

    def __init__(self, timeout: float = 0.5, cooldown: float = 1.0, max_cooldown: float = 30.0,
                 on_change: Callable[[bool], None] | None = None) -> None:
        self.timeout = timeout
        self.base_cooldown = cooldown
        self.cooldown = cooldown
        self.max_cooldown = max_cooldown
        self.open_until = 0.0  # monotonic; 0 = closed
        self.probing = False
        self.fast_failures = 0
        self._on_change = on_change or (lambda is_open: None)

    @property
    def is_open(self) -> bool:
        return self.open_until > 0.0

    async def call(self, op: Callable[[], Awaitable[T]], timeout: float | None = None) -> T:
        """Run one Redis operation under the breaker and a deadline."""
        probe = False
        if self.is_open:
            if self.probing or time.monotonic() < self.open_until:
                self.fast_failures += 1
                raise BreakerOpen("Redis circuit breaker is open")
            self.probing = probe = True
        try:
            result = await asyncio.wait_for(op(), timeout or self.timeout)
        except (RedisError, OSError, asyncio.TimeoutError) as exc:
            self._failed(exc)
            raise BreakerOpen(f"Redis operation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            if probe:
                self.probing = False
        self._succeeded()
        return result

    def _failed(self, exc: BaseException) -> None:
        if self.is_open:
            self.cooldown = min(self.cooldown * 2, self.max_cooldown)
        else:
            log.error("Redis failed (%s: %s): cache bypassed; probing again in %.1f s",
                      type(exc).__name__, exc, self.cooldown)
            self._on_change(True)
        self.open_until = time.monotonic() + self.cooldown

    def _succeeded(self) -> None:
        if self.is_open:
            log.warning("Redis answers again: cache back in service")
            self._on_change(False)
        self.open_until = 0.0
        self.cooldown = self.base_cooldown


class GuardedPipeline:
    """A Redis pipeline whose `execute` runs under the breaker (commands are only buffered)."""

    def __init__(self, pipe: Any, breaker: CircuitBreaker) -> None:
        self._pipe = pipe
        self._breaker = breaker

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._pipe, name)
        if not callable(attr):
            return attr

        def buffered(*args: Any, **kwargs: Any) -> GuardedPipeline:
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
        size = len(getattr(self._pipe, "command_stack", ()))
        return await self._breaker.call(run, timeout=max(self._breaker.timeout, 0.002 * size))


class GuardedRedis:
    """The asyncio Redis client with every round-trip under one CircuitBreaker."""

    def __init__(self, client: Any, breaker: CircuitBreaker) -> None:
        self.client = client
        self.breaker = breaker

    def pipeline(self, transaction: bool = False) -> GuardedPipeline:
        return GuardedPipeline(self.client.pipeline(transaction=transaction), self.breaker)

    async def scan_iter(self, match: str, count: int = 1000) -> AsyncIterator[Any]:
        """SCAN page by page, each page a guarded round-trip (a long scan is not one deadline)."""
        cursor: Any = 0
        while True:
            cursor, keys = await self.breaker.call(lambda c=cursor: self.client.scan(c, match=match, count=count),
                                                   timeout=max(self.breaker.timeout, 2.0))
            for key in keys:
                yield key
            if cursor == 0:
                return

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not callable(attr):
            return attr

        async def guarded(*args: Any, **kwargs: Any) -> Any:
            return await self.breaker.call(lambda: attr(*args, **kwargs))
        return guarded

    async def aclose(self) -> None:
        await self.client.aclose()
