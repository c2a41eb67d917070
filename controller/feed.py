"""The change feed that keeps every controller replica's in-memory indexes equal.

Each replica indexes in memory what lives in Redis; a store, eviction or invalidation made by
one replica is appended to a Redis Stream in the same round-trip as the document change, and
every other replica applies it to its own indexes (`ChangeFeed.follow`). Streams are ordered,
replayable from the last id a replica saw and trimmed by length; a replica that finds the
feed trimmed past that id rebuilds its indexes from the documents. Events name their origin,
so a replica skips its own. Expiry needs no event: every replica knows each entry's deadline.

The stream key is hash-tagged ({prefix}) so that on a Redis Cluster it lives in one slot.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

log = logging.getLogger("controller.feed")

MAXLEN = 100_000  # events kept (approximately); a replica further behind rebuilds
BLOCK_MS = 1000


@dataclass(frozen=True)
class Added:
    """A document another replica stored (what an index needs, without the answer)."""

    key: str
    category: str
    partition: str
    tenant: str
    expires: float
    profile: str
    query: str
    vector: bytes
    evicted: tuple[str, ...]


@dataclass(frozen=True)
class Deleted:
    """Documents another replica deleted (eviction, invalidation, stale entry)."""

    keys: tuple[str, ...]


Event = Added | Deleted


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def decode(fields: dict[Any, Any]) -> Event | None:
    """An event from a stream entry's fields (None for an unknown op)."""
    f = {_text(k): v for k, v in fields.items()}
    op = _text(f.get("op", b""))
    if op == "add":
        evicted = _text(f.get("evicted", b""))
        return Added(_text(f["key"]), _text(f["category"]), _text(f["partition"]), _text(f["tenant"]),
                     float(_text(f["expires"])), _text(f.get("profile", b"")), _text(f.get("query", b"")),
                     bytes(f["vector"]), tuple(evicted.split()) if evicted else ())
    if op == "del":
        return Deleted(tuple(_text(f["keys"]).split()))
    return None


class ChangeFeed:
    """Publishes this replica's changes and applies everyone else's."""

    def __init__(self, client: Any, prefix: str, maxlen: int = MAXLEN) -> None:
        self.client = client  # the raw asyncio client: a blocking read must not trip the breaker
        self.key = f"{{{prefix}}}:feed"
        self.origin = uuid.uuid4().hex[:16]
        self.maxlen = maxlen
        self.last_id = "0-0"
        self.read = 0  # events this replica has passed in the stream (its ordinal position)
        self.applied = 0
        self.rebuilds = 0

    def publish_added(self, pipe: Any, key: str, doc: dict[str, Any], evicted: list[str]) -> None:
        """Queue an add event on `pipe` (the pipeline that writes the document)."""
        fields = {"op": "add", "origin": self.origin, "key": key, "evicted": " ".join(evicted),
                  **{k: doc[k] for k in ("category", "partition", "tenant", "expires", "query", "vector")},
                  "profile": doc.get("profile", "")}
        pipe.xadd(self.key, fields, maxlen=self.maxlen, approximate=True)

    def publish_deleted(self, pipe: Any, keys: list[str]) -> None:
        """Queue a delete event on `pipe` (the pipeline that deletes the documents)."""
        pipe.xadd(self.key, {"op": "del", "origin": self.origin, "keys": " ".join(keys)},
                  maxlen=self.maxlen, approximate=True)

    async def position(self) -> tuple[str, int]:
        """The id of the newest event now and how many events were ever added (read before a
        rebuild: events after it are replayed)."""
        try:
            info = await self.client.xinfo_stream(self.key)
        except ResponseError:  # no stream yet
            return "0-0", 0
        return _text(info["last-generated-id"]), int(info["entries-added"])

    def seek(self, position: tuple[str, int]) -> None:
        self.last_id, self.read = position

    async def _trimmed_past_us(self) -> bool:
        """True when events after `last_id` were trimmed away before we read them: more events
        left the stream (added - length, Redis >= 7.0) than this replica has passed."""
        try:
            info = await self.client.xinfo_stream(self.key)
        except ResponseError:
            return False
        return int(info["entries-added"]) - int(info["length"]) > self.read

    async def follow(self, apply: Callable[[Event], None], rebuild: Callable[[], Awaitable[None]]) -> None:
        """Apply other replicas' events forever; `rebuild()` reloads from the documents (and
        `seek`s to the position it started from). Errors are logged and retried (Redis may be away)."""
        while True:
            try:
                if await self._trimmed_past_us():
                    log.warning("change feed trimmed past %s: rebuilding the indexes from Redis", self.last_id)
                    await rebuild()
                    self.rebuilds += 1
                reply = await self.client.xread({self.key: self.last_id}, count=500, block=BLOCK_MS)
                for _, entries in reply or []:
                    for entry_id, fields in entries:
                        self.last_id = _text(entry_id)
                        self.read += 1
                        if _text(fields.get(b"origin", fields.get("origin", b""))) == self.origin:
                            continue
                        event = decode(fields)
                        if event is not None:
                            apply(event)
                            self.applied += 1
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError) as exc:
                log.warning("change feed read failed (%s); retrying", exc)
                await asyncio.sleep(1.0)
            except Exception:
                log.exception("change feed event could not be applied; skipping it")

