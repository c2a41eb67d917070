"""Load-based policy: pure functions from (category policy, backend load) to cache and compute decisions.

Load is reduced to a *pressure* in [0, 1] (score / saturation), pressure to a discrete *level*
(0 = normal .. n = the last `level_thresholds` entry) with hysteresis, and the level to
the effective similarity threshold (relaxed linearly toward, never past, the floor), TTL
(extended toward ttl_max) and compute profile (the next rung of the ladder per level).
No I/O here: the controller measures load and applies the decisions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from policies.schema import CategoryPolicy, LoadPolicy


@dataclass(frozen=True)
class BackendLoad:
    """What is known about one backend's load (vLLM's Prometheus gauges + our own count)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0  # 0..1
    in_flight: int = 0  # the controller's own open requests to it
    age_seconds: float = 0.0  # since the last successful scrape
    up: bool = True


@dataclass(frozen=True)
class Decision:
    """Effective per-category values at one load level."""

    level: int
    threshold: float
    ttl_seconds: int
    compute_profile: str


def load_score(load: BackendLoad, policy: LoadPolicy) -> float:
    """Weighted load; a dead or silent backend is infinitely loaded.

    Requests the controller sent since the last scrape are not in vLLM's gauges yet, so the
    queue is at least what we know we have in flight.
    """
    if not load.up or load.age_seconds > policy.stale_after_seconds:
        return math.inf
    queued = max(load.waiting + load.running, float(load.in_flight))
    waiting = max(load.waiting, queued - load.running)
    return policy.weight_waiting * waiting + policy.weight_running * load.running + policy.weight_kv_usage * load.kv_usage


def pressure(score: float, policy: LoadPolicy) -> float:
    """Load score as a fraction of saturation, clipped to [0, 1]."""
    return 1.0 if math.isinf(score) else min(1.0, max(0.0, score / policy.saturation_score))


def next_level(current: int, p: float, policy: LoadPolicy) -> int:
    """Load level after observing pressure `p`: up as soon as a threshold is reached, down only
    once pressure falls `hysteresis` below the threshold of the current level (no flapping)."""
    target = sum(p >= t for t in policy.level_thresholds)
    current = min(current, len(policy.level_thresholds))  # a level from a policy with more levels
    if target >= current:
        return target
    level = current
    while level > target and p < policy.level_thresholds[level - 1] - policy.hysteresis:
        level -= 1
    return level


def decide(policy: CategoryPolicy, level: int, levels: int) -> Decision:
    """Effective threshold, TTL and compute profile of a category at `level` (0..levels)."""
    share = level / levels if levels else 0.0
    floor = policy.load.threshold_floor
    threshold = policy.similarity_threshold
    if floor is not None:
        threshold = max(floor, threshold - (threshold - floor) * share)
    ttl = policy.ttl_seconds
    if policy.load.ttl_max_seconds is not None:
        ttl = round(ttl + (policy.load.ttl_max_seconds - ttl) * share)
    ladder = [policy.compute_profile, *policy.load.profile_ladder]
    profile = ladder[min(level, len(ladder) - 1)]
    return Decision(level, threshold, ttl, profile)


def fleet_pressure(loads: list[BackendLoad], policy: LoadPolicy) -> float:
    """Pressure seen by the next miss: misses go to the least-loaded backend."""
    return min((pressure(load_score(b, policy), policy) for b in loads), default=1.0)
