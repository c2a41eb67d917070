"""The request path: parse -> (embed) -> plan -> cache lookup -> hit, or forward and store.

Every decision comes from controller.plan; this module only carries it out.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from controller import openai_format as oai
from controller import plan as planning
from controller import shadow
from controller.service import Controller
from controller.snapshot import PolicySnapshot

log = logging.getLogger("controller.proxy")


async def handle(ctl: Controller, request: Request, endpoint: str) -> Response:
    """Answer one chat or completions request."""
    snap, level = ctl.snapshot, ctl.load.level  # read once: one consistent policy per request
    raw = await _read_body(request, ctl.settings.max_body_bytes)
    if raw is None:
        return oai.error(413, f"request body larger than {ctl.settings.max_body_bytes} bytes", "request_too_large")
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except ValueError:
        body = None
    headers = {k.lower(): v for k, v in request.headers.items()}
    parsed = planning.parse(endpoint, body, headers, snap)
    if isinstance(parsed, planning.PlanError):
        return oai.error(parsed.status, parsed.message, param=parsed.param)
    vector = topic_vector = None
    if parsed.key and parsed.needs_vector(snap):
        if parsed.topic is None:
            vector = await ctl.embed(parsed.key.query)
        else:  # a greeting or thanks around the question: classified both ways
            vector, topic_vector = await asyncio.gather(ctl.embed(parsed.key.query), ctl.embed(parsed.topic))
    plan = planning.plan(parsed, snap, level, vector, topic_vector)
    info = plan.headers()
    category = plan.category
    ctl.metrics.assignments.labels(category, plan.category_source).inc()
    if plan.category_source == "low_confidence":
        ctl.metrics.low_confidence.inc()

    if plan.read:
        assert plan.key is not None and plan.vector is not None
        ctl.metrics.lookups.labels(category).inc()
        t0 = time.perf_counter()
        policy = snap.policy(category)
        hit = await ctl.cache.lookup(category, plan.key.partition, plan.vector,
                                     ctl.shadow.threshold(category, plan.decision.threshold),
                                     plan.accept_profiles, plan.key.query, policy.verifier)
        ctl.metrics.lookup_seconds.labels(category, "hit" if hit else "miss").observe(time.perf_counter() - t0)
        if hit is not None:
            ctl.metrics.hits.labels(category).inc()
            ctl.metrics.hit_similarity.labels(category).observe(hit.similarity)
            info |= {"x-cache": "HIT", "x-cache-similarity": f"{hit.similarity:.4f}"}
            response = oai.fresh_copy(hit.response)
            if policy.shadow.fraction and random.random() < policy.shadow.fraction:
                ctl.tasks.spawn(_shadow_check(ctl, snap, plan, endpoint, hit.response, list(request.headers.items())))
            if plan.stream:
                return StreamingResponse(_iter(oai.replay_stream(endpoint, response)),
                                         media_type="text/event-stream", headers=info)
            return JSONResponse(response, headers=info)
        ctl.metrics.misses.labels(category).inc()
        info["x-cache"] = "MISS"
    else:
        ctl.metrics.bypass.labels(category, plan.bypass_reason or "no-cache").inc()
        info["x-cache"] = "BYPASS"

    async def store(response: dict[str, Any], profile: str) -> None:
        """Cache a complete answer (made with `profile`, the one the backend ran), if the plan
        allows writing and the answer may be cached."""
        assert plan.key is not None and plan.vector is not None
        if not planning.storable(response):
            return
        stored = await ctl.cache.store(
            category, plan.key.partition, plan.key.tenant, plan.vector, plan.key.query, response,
            plan.decision.ttl_seconds, {"profile": profile, "model": str(response.get("model", ""))},
        )
        if stored:
            ctl.metrics.stores.labels(category).inc()

    return await ctl.upstream.forward(plan.path, endpoint, plan.upstream_body, request.headers.items(), info,
                                      snap.config.load_policy, store if plan.write else None)


def _not_json(token: str) -> Any:
    """NaN and Infinity are not JSON (Python accepts them; the backend request could not be sent)."""
    raise ValueError(f"{token} is not valid JSON")


async def _shadow_check(ctl: Controller, snap: PolicySnapshot, plan: planning.RequestPlan, endpoint: str,
                        cached: dict[str, Any], headers: list[tuple[str, str]]) -> None:
    """Ask the backend too (after the hit was served) and record whether the answers agree."""
    policy = snap.policy(plan.category)

    async def compare(fresh: dict[str, Any], _profile: str) -> None:
        same = await asyncio.to_thread(shadow.same_answer, shadow.answer_text(cached), shadow.answer_text(fresh),
                                       ctl.encoder.encode, policy.shadow.min_answer_similarity,
                                       plan.key is not None and plan.key.temperature == 0)
        ctl.shadow.record(plan.category, not same, policy.max_false_hit_rate)

    try:
        await ctl.upstream.forward(plan.path, endpoint, {**plan.upstream_body, "stream": False}, headers, {},
                                   snap.config.load_policy, compare)
    except Exception:  # a shadow check never affects serving
        log.exception("shadow check failed")


async def _read_body(request: Request, limit: int) -> bytes | None:
    """The request body, or None past `limit` bytes (stops reading there: no unbounded buffer)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _iter(chunks: list[bytes]) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk
