"""Semantic cache: one in-memory hnswlib index per category, documents in Redis.

* Lookup: vector search in memory, restricted to the request's exact partition and
  to entries not yet expired, in two stages: the index proposes the top-k entries at or
  above the category's similarity threshold (and repeats of the query at any similarity:
  the same question re-typed), a verifier (controller.verify) accepts at
  most one, comparing the query with each candidate's stored question (kept in memory,
  so a miss costs no Redis round-trip); a hit costs one (answer + hit count, pipelined).
* Store: one pipelined round-trip (HSET + EXPIRE, plus DEL of anything evicted).
  Redis expires documents by itself (native TTL); the index drops them lazily.
* Quota: at `max_entries` the least recently used entry (last hit or insertion) is
  evicted from both the index and Redis. LRU keeps answers people still ask for,
  which is what a cache in front of an LLM is for; expired entries go first.
* Restart: vectors are stored with the documents, so the indexes are rebuilt from
  Redis on start-up and nothing Redis kept is lost.
* Redis errors never reach the client: a failed read is a miss, a failed write is
  not indexed (index and Redis stay consistent).
"""

from __future__ import annotations

import heapq
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import hnswlib
import numpy as np
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from controller import verify
from controller.feed import ChangeFeed, Deleted, Event
from policies.schema import PolicyConfig, VerifierSetting

log = logging.getLogger("controller.cache")

#: Partitions up to this size are searched exactly (a matrix product over their vectors; at this
#: size it costs about what an index query does).
EXACT_LIMIT = 256
_FIELDS = ("category", "partition", "tenant", "expires", "vector", "profile", "query")


@dataclass
class Entry:
    """In-memory shadow of one Redis document (enough to search without Redis)."""

    label: int
    key: str
    partition: str
    tenant: str
    expires: float
    profile: str = ""  # the compute profile the answer was made with
    query: str = ""  # the question the answer was made for (what verifiers compare with)


@dataclass(frozen=True)
class Hit:
    """A served cache hit."""

    response: dict[str, Any]
    similarity: float
    key: str


class CategoryIndex:
    """The hnswlib index and LRU bookkeeping of one category."""

    def __init__(self, dim: int, capacity: int) -> None:
        self.dim = dim
        self.capacity = capacity
        self.index = hnswlib.Index(space="cosine", dim=dim)
        self.index.init_index(max_elements=capacity, ef_construction=100, M=16, allow_replace_deleted=True)
        self.index.set_ef(64)
        self.index.set_num_threads(1)
        self.entries: OrderedDict[int, Entry] = OrderedDict()  # LRU order: oldest first
        self.by_key: dict[str, int] = {}  # Redis key -> label (applying the change feed)
        self.by_partition: dict[str, set[int]] = {}  # partition -> live labels (exact search)
        self.vectors: dict[int, np.ndarray] = {}  # label -> unit vector (hnswlib's get_items is slow)
        self._expiry: list[tuple[float, int]] = []  # min-heap of (expires, label), lazily cleaned
        self._next_label = 0
        self.quota_evictions = 0

    def resize(self, capacity: int) -> list[Entry]:
        """Apply a new quota; returns entries that no longer fit (to delete from Redis)."""
        evicted = []
        while len(self.entries) > capacity:
            evicted.append(self.remove(next(iter(self.entries))))
        self.quota_evictions += len(evicted)
        if capacity > self.index.get_max_elements():
            self.index.resize_index(capacity)
        self.capacity = capacity
        return evicted

    def candidates(
        self, vector: np.ndarray, partition: str, now: float, profiles: frozenset[str] | None, k: int
    ) -> list[tuple[Entry, float]]:
        """Up to `k` nearest live entries of `partition`, most similar first.

        A partition of up to EXACT_LIMIT entries (one tenant's, one system prompt's: most of
        them) is searched exactly over its own vectors. hnswlib's filtered search can miss the
        only allowed element when the filter is very selective or the graph is mostly deleted
        nodes (measured: 5 of 200 single live entries not found after repeated deletions), and
        a cache must not lose a hit it holds."""
        labels_here = self.by_partition.get(partition)
        if not labels_here:
            return []
        entries = self.entries
        if len(labels_here) <= EXACT_LIMIT:
            live = [lbl for lbl in labels_here if entries[lbl].expires > now
                    and (profiles is None or entries[lbl].profile in profiles)]
            if not live:
                return []
            sims = np.stack([self.vectors[lbl] for lbl in live]) @ (
                vector / max(float(np.linalg.norm(vector)), 1e-12))
            best = np.argsort(-sims)[:k]
            return [(entries[live[i]], float(sims[i])) for i in best]

        def allowed(label: int) -> bool:
            entry = entries.get(label)
            return (entry is not None and entry.partition == partition and entry.expires > now
                    and (profiles is None or entry.profile in profiles))

        while k >= 1:
            try:
                labels, distances = self.index.knn_query(vector, k=k, filter=allowed)
                break
            except RuntimeError:  # fewer than k elements pass the filter
                k //= 2
        else:
            return []
        return [(entries[int(lbl)], 1.0 - float(d)) for lbl, d in zip(labels[0], distances[0])]

    def touch(self, label: int) -> None:
        """Mark an entry as just used (LRU)."""
        self.entries.move_to_end(label)

    def add(self, vector: np.ndarray, entry_for_label: Callable[[int], Entry], evict: bool = True
            ) -> tuple[Entry, list[Entry]]:
        """Insert a vector; returns the new entry and the entries dropped to make room
        (expired ones first, then the least recently used: the quota evictions). With
        `evict=False` (another replica's entry: its evictions arrive on the feed) the index
        grows instead, so the quota is decided once, by the replica that stored."""
        expired = self.purge_expired(time.time())
        evicted = []
        while evict and len(self.entries) >= self.capacity:
            evicted.append(self.remove(next(iter(self.entries))))
        self.quota_evictions += len(evicted)
        if len(self.entries) >= self.index.get_max_elements():
            self.index.resize_index(len(self.entries) + max(16, len(self.entries) // 4))
        label = self._next_label  # labels are never reused, so a stale label can't alias
        self._next_label += 1
        # Deleted slots count towards hnswlib's capacity: reuse one once the index is full.
        full = self.index.get_current_count() >= self.index.get_max_elements()
        self.index.add_items(vector[None, :], [label], replace_deleted=full)
        entry = entry_for_label(label)
        self.entries[label] = entry
        self.by_key[entry.key] = label
        self.by_partition.setdefault(entry.partition, set()).add(label)
        self.vectors[label] = (vector / max(float(np.linalg.norm(vector)), 1e-12)).astype(np.float32)
        heapq.heappush(self._expiry, (entry.expires, label))
        if len(self._expiry) > 2 * self.capacity:  # drop heap items of evicted entries
            self._expiry = [(e.expires, lbl) for lbl, e in self.entries.items()]
            heapq.heapify(self._expiry)
        return entry, expired + evicted

    def remove(self, label: int) -> Entry:
        """Drop an entry from the index (the caller deletes the Redis document)."""
        entry = self.entries.pop(label)
        self.by_key.pop(entry.key, None)
        self.vectors.pop(label, None)
        same = self.by_partition.get(entry.partition)
        if same is not None:
            same.discard(label)
            if not same:
                del self.by_partition[entry.partition]
        self.index.mark_deleted(label)
        return entry

    def purge_expired(self, now: float) -> list[Entry]:
        """Drop entries whose TTL has passed (Redis already expired their documents).

        O(log n) per expired entry: labels are never reused, so a heap item whose label is
        no longer live belongs to an entry already removed and is skipped.
        """
        dead = []
        while self._expiry and self._expiry[0][0] <= now:
            _, label = heapq.heappop(self._expiry)
            if label in self.entries:
                dead.append(self.remove(label))
        return dead


class SemanticCache:
    """Category-aware semantic cache over Redis documents and in-memory hnswlib indexes."""

    def __init__(self, client: aioredis.Redis, config: PolicyConfig, dim: int, prefix: str = "va",
                 feed: ChangeFeed | None = None) -> None:
        self.redis = client
        self.dim = dim
        self.prefix = prefix
        self.feed = feed  # shared with other replicas (controller.feed); None: a lone replica
        self.indexes: dict[str, CategoryIndex] = {}
        self.rejections: dict[str, int] = {}  # lookups whose candidates the verifier all refused
        self.configure(config)

    def configure(self, config: PolicyConfig) -> list[Entry]:
        """Create or resize each category's index for `config` (on start-up and reload).

        Returns the entries a smaller quota pushed out; the caller deletes their documents.
        """
        evicted: list[Entry] = []
        for cat in config.categories:
            quota = cat.policy.max_entries
            if cat.name in self.indexes:
                evicted += self.indexes[cat.name].resize(quota)
            else:
                self.indexes[cat.name] = CategoryIndex(self.dim, quota)
        return evicted

    def size(self, category: str) -> int:
        """Live entries of `category` in memory."""
        return len(self.indexes[category].entries) if category in self.indexes else 0

    async def lookup(
        self, category: str, partition: str, vector: np.ndarray, threshold: float,
        profiles: frozenset[str] | None = None, query: str = "", verifier: VerifierSetting | None = None,
    ) -> Hit | None:
        """The cached answer for a query, or None (no Redis round-trip unless a candidate passes).
        `profiles`: only answers made with one of these compute profiles qualify. `verifier`:
        of the `top_k` candidates at or above `threshold` (or repeats of `query`), the one it
        accepts for `query` (None or "threshold": the nearest, as a plain similarity cache)."""
        index = self.indexes.get(category)
        if index is None:
            return None
        plain = verifier is None or verifier.name == "threshold"
        found = [c for c in index.candidates(vector, partition, time.time(), profiles, 1 if plain else verifier.top_k)
                 if verify.proposed(query, c[0].query, c[1], threshold)]
        if not found:
            return None
        if not plain:
            chosen = verify.choose(verify.load(verifier.name), verifier.min_score, query,
                                   [(e.query, sim) for e, sim in found])
            if chosen is None:
                self.rejections[category] = self.rejections.get(category, 0) + 1
                return None
            found = found[chosen:]
        entry, similarity = found[0]
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hget(entry.key, "response")
            pipe.hincrby(entry.key, "hits", 1)
            raw, _ = await pipe.execute()
        except RedisError as exc:
            log.warning("redis read failed, serving a miss: %s", exc)
            return None
        if raw is None:  # expired or deleted in Redis before our shadow noticed
            index.remove(entry.label)
            await self._delete([entry.key])  # drop the hits counter HINCRBY just created
            return None
        index.touch(entry.label)
        return Hit(json.loads(raw), similarity, entry.key)

    async def store(
        self, category: str, partition: str, tenant: str, vector: np.ndarray,
        query: str, response: dict[str, Any], ttl_seconds: int, meta: dict[str, str],
    ) -> str | None:
        """Cache an answer; returns its Redis key, or None if Redis refused it."""
        index = self.indexes[category]
        now = time.time()
        key = f"{self.prefix}:doc:{category}:{uuid.uuid4().hex}"
        entry, evicted = index.add(
            vector, lambda label: Entry(label, key, partition, tenant, now + ttl_seconds, meta.get("profile", ""), query)
        )
        doc = {
            "category": category, "partition": partition, "tenant": tenant, "query": query,
            "response": json.dumps(response), "created": now, "expires": now + ttl_seconds,
            "hits": 0, "vector": vector.astype(np.float32).tobytes(), **meta,
        }
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hset(key, mapping=doc)
            pipe.expire(key, ttl_seconds)
            for gone in evicted:  # one DEL per key: on a cluster the keys live in different slots
                pipe.delete(gone.key)
            if self.feed is not None:
                self.feed.publish_added(pipe, key, doc, [e.key for e in evicted])
            await pipe.execute()
        except RedisError as exc:
            log.warning("redis write failed, answer not cached: %s", exc)
            index.remove(entry.label)
            return None
        return key

    async def reconfigure(self, config: PolicyConfig) -> None:
        """Apply a reloaded policy, deleting the documents that a smaller quota evicted."""
        await self._delete([e.key for e in self.configure(config)])

    async def invalidate(self, category: str | None = None, tenant: str | None = None) -> int:
        """Delete entries of a category and/or tenant (all when both are None)."""
        doomed: list[Entry] = []
        for name, index in self.indexes.items():
            if category is not None and name != category:
                continue
            for label in [lbl for lbl, e in index.entries.items() if tenant is None or e.tenant == tenant]:
                doomed.append(index.remove(label))
        await self._delete([e.key for e in doomed])
        if category is None and tenant is None:  # also documents of categories no longer configured
            await self._delete([k async for k in self.redis.scan_iter(f"{self.prefix}:doc:*", count=1000)])
        return len(doomed)

    async def _delete(self, keys: list[str]) -> None:
        """Delete documents (and tell the other replicas, in the same round-trip)."""
        for start in range(0, len(keys), 1000):
            batch = keys[start : start + 1000]
            try:
                pipe = self.redis.pipeline(transaction=False)
                for key in batch:  # one DEL per key: on a cluster the keys live in different slots
                    pipe.delete(key)
                if self.feed is not None:
                    self.feed.publish_deleted(pipe, batch)
                await pipe.execute()
            except RedisError as exc:  # Redis TTLs still bound how long they linger
                log.warning("redis delete failed: %s", exc)

    def apply(self, event: Event) -> None:
        """Apply another replica's change to the in-memory indexes (controller.feed)."""
        if isinstance(event, Deleted):
            self._forget(event.keys)
            return
        self._forget(event.evicted)
        index = self.indexes.get(event.category)
        if index is None or event.key in index.by_key or event.expires <= time.time():
            return  # a category this replica does not serve, a duplicate, or already expired
        index.add(np.frombuffer(event.vector, dtype=np.float32), lambda label: Entry(
            label, event.key, event.partition, event.tenant, event.expires, event.profile, event.query), evict=False)

    def _forget(self, keys: tuple[str, ...]) -> None:
        for key in keys:
            for index in self.indexes.values():
                label = index.by_key.get(key)
                if label is not None:
                    index.remove(label)

    async def resync(self) -> None:
        """Start the indexes afresh from the documents (the feed was trimmed past this replica)."""
        self.indexes = {name: CategoryIndex(self.dim, index.capacity) for name, index in self.indexes.items()}
        await self.rebuild()

    async def rebuild(self) -> int:
        """Index every live document Redis holds that is not indexed yet (start-up, resync).

        The feed position is read first: changes made during the scan are replayed after it,
        and replaying one that the scan already saw is a no-op (indexes know their keys)."""
        position = await self.feed.position() if self.feed is not None else None
        loaded = 0
        now = time.time()
        batch: list[str] = []
        async for key in self.redis.scan_iter(f"{self.prefix}:doc:*", count=1000):
            batch.append(key.decode() if isinstance(key, bytes) else key)
            if len(batch) >= 1000:
                loaded += await self._load(batch, now)
                batch = []
        if batch:
            loaded += await self._load(batch, now)
        if self.feed is not None and position is not None:
            self.feed.seek(position)
        return loaded

    async def _load(self, keys: list[str], now: float) -> int:
        pipe = self.redis.pipeline(transaction=False)
        for key in keys:
            pipe.hmget(key, *_FIELDS)
        loaded = 0
        for key, values in zip(keys, await pipe.execute()):
            if values[0] is None:
                continue  # expired between SCAN and HMGET
            category, partition, tenant, expires, vector, profile, query = (
                v if i == 4 or v is None else v.decode() for i, v in enumerate(values)
            )
            index = self.indexes.get(category)
            if index is None or float(expires) <= now or key in index.by_key:
                continue  # not configured now (left for its TTL or an invalidate), expired, or known
            vec = np.frombuffer(vector, dtype=np.float32)
            _, evicted = index.add(
                vec, lambda label: Entry(label, key, partition, tenant, float(expires), profile or "", query or "")
            )
            await self._delete([e.key for e in evicted])
            loaded += 1
        return loaded
