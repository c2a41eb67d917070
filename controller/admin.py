"""Admin endpoints (/admin/*), all behind one dependency that checks the admin token.

Disabled (403) unless the controller was started with --admin-token (or ADAPTIVE_ADMIN_TOKEN);
the token is compared in constant time. Expose them only on an internal network.
"""

from __future__ import annotations

import hmac
import json
import math
import time
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from controller import openai_format as oai
from controller.keys import tenant_of
from controller.service import Controller
from policies.load import load_score
from policies.schema import PolicyError


class AdminDenied(Exception):
    """Raised by the admin guard; turned into an OpenAI-style error by the app."""

    def __init__(self, status: int, message: str, type_: str) -> None:
        super().__init__(message)
        self.response = oai.error(status, message, type_)


def _controller(request: Request) -> Controller:
    return request.app.state.ctl


def require_admin(request: Request) -> None:
    """The one admin check: a configured token, sent in X-Admin-Token, compared in constant time."""
    token = _controller(request).settings.admin_token
    if not token:
        raise AdminDenied(403, "admin endpoints are disabled (start with --admin-token)", "permission_error")
    given = request.headers.get("x-admin-token", "")
    if not hmac.compare_digest(given.encode(), token.encode()):
        raise AdminDenied(401, "missing or wrong X-Admin-Token", "authentication_error")


router = APIRouter(prefix="/admin", dependencies=[Depends(require_admin)])


@router.post("/invalidate")
async def invalidate(request: Request) -> Response:
    ctl = _controller(request)
    raw = await request.body()
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        return oai.error(400, "body must be a JSON object with optional 'category' and 'tenant'")
    category, tenant = body.get("category"), body.get("tenant")
    if category is not None and category not in ctl.snapshot.categories:
        return oai.error(404, f"unknown category {category!r}", param="category")
    # `tenant` is the credential as the client sends it; we only ever store its hash.
    tenant_hash = tenant_of({"x": tenant}, "x") if tenant is not None else None
    removed = await ctl.cache.invalidate(category, tenant_hash)
    return JSONResponse({"invalidated": removed, "category": category, "tenant": tenant is not None})


@router.get("/effective")
async def effective(request: Request) -> Response:
    return JSONResponse(effective_state(_controller(request)))


@router.post("/reload")
async def reload(request: Request) -> Response:
    ctl = _controller(request)
    try:
        snapshot = await ctl.reload()
    except PolicyError as exc:
        return oai.error(422, f"reload refused, old policy still active:\n{exc}")
    return JSONResponse({"reloaded": True, "categories": [c.name for c in snapshot.config.categories]})


def effective_state(ctl: Controller) -> dict[str, Any]:
    """What is in force now and the load that caused it."""
    now = time.monotonic()
    snap, level = ctl.snapshot, ctl.load.level
    policy = snap.config.load_policy
    return {
        "level": level, "pressure": ctl.load.pressure,
        "backends": [
            {"url": b.url, "waiting": b.waiting, "running": b.running, "kv_usage": b.kv_usage,
             "in_flight": b.in_flight, "up": b.up(now), "scrape_age_seconds": now - b.scraped_at,
             "score": _finite(load_score(b.load(now), policy)),
             "serves": None if b.serves is None else sorted(b.serves), "default_profile": b.default_profile}
            for b in ctl.pool.backends
        ],
        "categories": {c.name: vars(snap.decision(c.name, level)) for c in snap.config.categories},
    }


def _finite(x: float) -> float | None:
    """JSON has no infinity: a dead or silent backend's score is reported as null."""
    return None if math.isinf(x) else x
