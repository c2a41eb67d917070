"""The request plan: the single place that decides what happens to a request. Pure.

(endpoint, body, headers, policy snapshot, load level, query vector) -> category, cache key,
decision, whether to read and/or write the cache (or why not), the compute profile sent
upstream and which cached profiles the answer may come from. No I/O: the proxy embeds,
looks up, forwards and stores as the plan says.

Two steps so a request is embedded only when needed: `parse` validates and says whether a vector
is needed (classification, cache read or write); `plan` finishes with it. A query wrapped in a
greeting or thanks is embedded twice (concurrently): as sent, for the cache and the classifier,
and without the wrapping (`Parsed.topic`), for the classifier, which takes the more confident reading.

Compute profiles and sharing (documented in README):
* A profile the *client* chose (`vllm_xargs.adaptive_profile`) wins and is sent unchanged; it is
  part of the cache partition (controller.keys), like a different model.
* The profile the *controller* chose (the category's `compute_profile`, or a brownout rung under
  load) is not part of the partition, but an answer is only served to requests whose own profile
  is at most as degraded: at load level L a request accepts answers made with `full` or any rung
  of its category's ladder up to L. A brownout answer is never served at normal load.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from controller.keys import CacheKey, cache_key
from controller.snapshot import PolicySnapshot
from controller.verify import repeat
from policies.load import Decision
from policies.schema import CategoryPolicy

CATEGORY_HEADER = "x-adaptive-category"
PROFILE_XARG = "adaptive_profile"
FULL_PROFILE = "full"
PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
#: What a profile file allows as a name (vllm_adaptive.profiles); also safe in a response header.
PROFILE_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class PlanError:
    """A request refused before anything else happens (an OpenAI-style 4xx)."""

    status: int
    message: str
    param: str | None = None


@dataclass(frozen=True)
class Parsed:
    """A validated request, before classification."""

    endpoint: str
    body: dict[str, Any]
    key: CacheKey | None
    explicit_category: str | None
    directives: frozenset[str]
    topic: str | None = None  # the query without a greeting or thanks, for the classifier (see `parse`)

    def needs_vector(self, snap: PolicySnapshot) -> bool:
        """True when classification or the cache will use the query's embedding."""
        if self.key is None:
            return False
        if self.explicit_category is None:
            return True  # the classifier needs it
        read, write, _ = _cache_use(self.key, snap.policy(self.explicit_category), self.body, self.directives)
        return read or write


@dataclass(frozen=True)
class RequestPlan:
    """What the proxy does with one request."""

    endpoint: str
    category: str
    category_source: str  # "header", or how the classifier chose (controller.classifier.Assignment)
    decision: Decision
    key: CacheKey | None
    vector: np.ndarray | None
    read: bool
    write: bool
    bypass_reason: str | None  # why the cache is not read (None when it is)
    profile: str  # the compute profile actually sent upstream
    profile_source: str  # "client" or "policy"
    accept_profiles: frozenset[str]  # cached answers made with these profiles may be served
    upstream_body: dict[str, Any]

    @property
    def path(self) -> str:
        return PATHS[self.endpoint]

    @property
    def stream(self) -> bool:
        return bool(self.upstream_body.get("stream"))

    def headers(self) -> dict[str, str]:
        """Response headers that tell the client what was decided."""
        return {"x-cache-category": self.category, "x-adaptive-profile": self.profile,
                "x-adaptive-profile-source": self.profile_source, "x-load-level": str(self.decision.level)}


def parse(endpoint: str, body: Any, headers: dict[str, str], snap: PolicySnapshot) -> Parsed | PlanError:
    """Validate the request against the snapshot; `headers` must have lower-case names."""
    if not isinstance(body, dict):
        return PlanError(400, "request body must be a JSON object")
    if endpoint == "chat" and not isinstance(body.get("messages"), list):
        return PlanError(400, "'messages' must be a list", "messages")
    if endpoint == "completions" and "prompt" not in body:
        return PlanError(400, "'prompt' is required", "prompt")
    xargs = body.get("vllm_xargs")
    if xargs is not None and not isinstance(xargs, dict):
        return PlanError(400, "'vllm_xargs' must be an object", "vllm_xargs")
    profile = (xargs or {}).get(PROFILE_XARG)
    if profile is not None and not (isinstance(profile, str) and PROFILE_NAME.fullmatch(profile)):
        return PlanError(400, f"vllm_xargs.{PROFILE_XARG} must be a profile name (letters, digits, '_', '-', '.')",
                         f"vllm_xargs.{PROFILE_XARG}")
    explicit = headers.get(CATEGORY_HEADER)
    if explicit is not None and explicit not in snap.categories:
        return PlanError(400, f"unknown category {explicit!r} in {CATEGORY_HEADER} (known: "
                         f"{', '.join(sorted(snap.categories))})", CATEGORY_HEADER)
    config = snap.config
    key = cache_key(endpoint, body, headers, config.tenant_header, config.history_window)
    directives = frozenset(d.strip().lower() for d in headers.get("cache-control", "").split(",") if d.strip())
    topic = None  # a query wrapped in a greeting or thanks is classified both ways
    if key is not None and explicit is None:
        unwrapped = repeat.question(key.query)
        topic = unwrapped if unwrapped != key.query else None
    return Parsed(endpoint, body, key, explicit, directives, topic)


def plan(parsed: Parsed, snap: PolicySnapshot, level: int, vector: np.ndarray | None,
         topic_vector: np.ndarray | None = None) -> RequestPlan:
    """Finish the plan; `vector` is the query's embedding when `parsed.needs_vector(snap)` (None
    if it was not ready in time: the category is then the header's or the default, and the cache
    is neither read nor written); `topic_vector`, that of `parsed.topic` when there is one (the
    classifier then takes the more confident of the two readings)."""
    if parsed.explicit_category is not None:
        category, category_source = parsed.explicit_category, "header"
    elif parsed.key is not None and vector is not None:
        readings = [(parsed.key.query, vector)]
        if parsed.topic is not None and topic_vector is not None:
            readings.append((parsed.topic, topic_vector))
        category, _, category_source = snap.classifier.most_confident(readings)
    else:
        category, category_source = snap.config.default_category, "default"
    policy = snap.policy(category)
    decision = snap.decision(category, level)
    read, write, reason = (False, False, "shape") if parsed.key is None else _cache_use(
        parsed.key, policy, parsed.body, parsed.directives)
    if (read or write) and vector is None:  # the embedding missed its deadline: a miss, never a stall
        read, write, reason = False, False, "embed-deadline"

    xargs = dict(parsed.body.get("vllm_xargs") or {})
    client_profile = xargs.get(PROFILE_XARG)
    if client_profile is not None:
        profile, source, accept = client_profile, "client", frozenset({client_profile})
    else:
        profile, source = decision.compute_profile, "policy"
        ladder = [policy.compute_profile, *policy.load.profile_ladder]
        accept = frozenset({FULL_PROFILE, *ladder[: decision.level + 1]})
        xargs[PROFILE_XARG] = profile
    upstream_body = {**parsed.body, "vllm_xargs": xargs}
    return RequestPlan(
        parsed.endpoint, category, category_source, decision, parsed.key, vector if (read or write) else None,
        read, write, reason, profile, source, accept, upstream_body,
    )


def _cache_use(key: CacheKey, policy: CategoryPolicy, body: dict[str, Any], directives: frozenset[str]
               ) -> tuple[bool, bool, str | None]:
    """(read, write, reason the cache is not read): the one rule of what is cacheable."""
    reason = _uncacheable(key, policy, body)
    read = reason is None and "no-cache" not in directives
    write = reason is None and "no-store" not in directives
    return read, write, reason if reason is not None or read else "no-cache"


def _uncacheable(key: CacheKey, policy: CategoryPolicy, body: dict[str, Any]) -> str | None:
    """Why a request must not use the cache at all, or None."""
    if not policy.cacheable:
        return "policy"
    if key.temperature > 0 and not policy.cache_sampled:
        return "sampled"
    if (body.get("n") or 1) != 1:
        return "n"
    return None


def storable(response: dict[str, Any]) -> bool:
    """Whether a complete backend answer may be cached.

    Tool calls are never cached: a tool call asks the *client* to act (call a function with
    these arguments) in the client's own state, so replaying one for a merely similar query
    would run a possibly different action; the text answers of tool-enabled requests are cached
    (the tool list is part of the partition). Cut or failed generations are never cached.
    """
    choices = response.get("choices") or []
    if not choices:
        return False
    for choice in choices:
        if choice.get("finish_reason") in (None, "abort", "error", "tool_calls", "function_call"):
            return False
        message = choice.get("message") or {}
        if message.get("tool_calls") or message.get("function_call"):
            return False
    return True
