"""Background work that must outlive the request that started it.

asyncio keeps only weak references to tasks, so a task nobody holds may be collected before it
finishes; one set holds them until they are done (late cache stores, shadow checks, SIGHUP reloads).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any


class TaskSet:
    """Tasks kept referenced until done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Future[Any]] = set()

    def spawn(self, work: Awaitable[Any]) -> asyncio.Future[Any]:
        """Run `work` in the background; returns its task."""
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task
