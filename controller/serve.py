"""Run one controller process: uvicorn, plus an embedded Redis when no --redis is given.

Shared by `adaptive-controller serve` and `adaptive-controller up` (controller.stack).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any


def run_controller(args: argparse.Namespace, ready: Callable[[Any], None] | None = None) -> int:
    """Serve until SIGINT/SIGTERM; with no --redis, own an embedded Redis meanwhile."""
    import uvicorn

    from controller import embeddings
    from controller.app import create_app
    from controller.redis_server import EmbeddedRedis
    from controller.service import Settings
    from policies.schema import PolicyError

    embedded = None
    redis_url = args.redis
    if redis_url is None:
        embedded = EmbeddedRedis(Path(args.data_dir), port=args.redis_port).start()
        redis_url = embedded.url
        print(f"adaptive-controller: embedded Redis at {redis_url}, data in {args.data_dir}", flush=True)
    try:
        settings = Settings(
            config_path=Path(args.config), backends=args.backend, redis_url=redis_url,
            admin_token=args.admin_token or os.environ.get("ADAPTIVE_ADMIN_TOKEN"),
            upstream_timeout=args.upstream_timeout, max_body_bytes=args.max_body_bytes,
            redis_timeout=args.redis_timeout, embed_deadline=args.embed_deadline_ms / 1e3,
            embed_max_batch=args.embed_max_batch, embed_workers=args.embed_workers,
        )
        try:
            app = create_app(settings, embeddings.load(args.encoder))
        except PolicyError as exc:
            print(f"adaptive-controller: refusing to start, invalid policy file:\n{exc}", file=sys.stderr)
            return 2

        server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="warning"))
        if ready is not None:
            ready(server)
        server.run()
        return 0
    finally:
        if embedded is not None:
            embedded.stop()
