"""Query embeddings in micro-batches, each under a deadline.

Queries of concurrent requests are encoded together: the queries that arrive while the encoder
workers are busy queue up and go in the next batches. Nothing waits for a batch to fill — a query
that finds a worker idle starts at once — so a lone request pays one single-query encode. A batch
is split into groups of similar length (`embeddings.encode_grouped`): on the CPU the cost follows
the padded tokens, and a batch of random-length queries cost more per query than encoding each
alone (bench/embed_batching.py measures both). The workers (one thread each) share the queue, so
the encoder never takes more cores than given, however many requests wait.

A query whose embedding is not ready by its deadline gets None: the caller treats it as a cache
miss and goes to the backend, so a slow or stuck encoder never stalls a request. A query past its
deadline is dropped from the queue, not encoded; an encoder error is a miss too (logged).
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from controller.embeddings import Encoder, encode_grouped

log = logging.getLogger("controller.embed")


@dataclass
class _Job:
    text: str
    future: asyncio.Future[np.ndarray]


class EmbedBatcher:
    """`embed` may be awaited by any number of requests of one event loop."""

    def __init__(self, encoder: Encoder, max_batch: int = 32, deadline_s: float = 0.1, workers: int = 4,
                 on_batch: Callable[[int], None] | None = None) -> None:
        if max_batch < 1 or workers < 1 or deadline_s <= 0:
            raise ValueError(f"max_batch and workers must be >= 1 and the deadline > 0 "
                             f"(got {max_batch}, {workers}, {deadline_s})")
        self.encoder = encoder
        self.max_batch = max_batch
        self.deadline_s = deadline_s
        self.workers = workers
        self._on_batch = on_batch
        self._queue: asyncio.Queue[_Job] | None = None  # made in the serving loop, at first use
        self._tasks: list[asyncio.Task[None]] = []

    async def embed(self, text: str) -> np.ndarray | None:
        """`text`'s unit vector, or None when it missed the deadline or the encoder failed."""
        if self._queue is None:
            self._queue = asyncio.Queue()
            self._tasks = [asyncio.create_task(self._run(self._queue)) for _ in range(self.workers)]
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Job(text, future))
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.deadline_s)
        except TimeoutError:
            return None
        except Exception:
            log.exception("query embedding failed; served as a cache miss")
            return None
        finally:  # past the deadline or the request cancelled: still queued, it is skipped
            future.cancel()  # (being encoded: its result is dropped); done: no-op

    async def close(self) -> None:
        """Stop the workers (queries still queued then miss their deadlines)."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._queue, self._tasks = None, []

    async def _run(self, queue: asyncio.Queue[_Job]) -> None:
        while True:
            jobs = [await queue.get()]
            # Leave the idle workers their share of a burst: each core takes part of it.
            share = min(self.max_batch, math.ceil((queue.qsize() + 1) / self.workers))
            while len(jobs) < share and not queue.empty():
                jobs.append(queue.get_nowait())
            jobs = [job for job in jobs if not job.future.done()]  # drop queries whose request gave up
            if not jobs:
                continue
            try:
                vectors = await asyncio.to_thread(encode_grouped, self.encoder, [job.text for job in jobs])
            except Exception as exc:  # every waiting request sees it (and misses)
                for job in jobs:
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            for job, vector in zip(jobs, vectors):
                if not job.future.done():
                    job.future.set_result(vector)
            if self._on_batch is not None:
                self._on_batch(len(jobs))
