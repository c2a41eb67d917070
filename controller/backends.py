"""The vLLM servers behind the controller, and which one gets the next miss."""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass
class Backend:
    """One vLLM server. `in_flight` is the controller's own count of open requests."""

    url: str
    in_flight: int = 0
    down_until: float = 0.0
    failures: int = 0

    def up(self, now: float) -> bool:
        return self.down_until <= now


class BackendPool:
    """Least-loaded routing over healthy backends; a failing backend sits out `cooldown` s."""

    def __init__(self, urls: list[str], cooldown: float = 5.0) -> None:
        if not urls:
            raise ValueError("at least one --backend URL is required")
        self.backends = [Backend(u.rstrip("/")) for u in urls]
        self.cooldown = cooldown

    def order(self) -> list[Backend]:
        """Backends to try, best first: healthy ones by in-flight count, then the rest."""
        now = time.monotonic()
        return sorted(self.backends, key=lambda b: (not b.up(now), b.in_flight, b.down_until))

    def failed(self, backend: Backend) -> None:
        """Take `backend` out of rotation for a while after a connection error or timeout."""
        backend.failures += 1
        backend.down_until = time.monotonic() + self.cooldown

    def succeeded(self, backend: Backend) -> None:
        backend.failures = 0
        backend.down_until = 0.0
