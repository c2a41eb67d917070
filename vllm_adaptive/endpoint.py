"""HTTP surface of the plugin inside vLLM's own API server (``vllm.endpoint_plugins``).

vLLM loads endpoint plugins only when they are named in ``VLLM_PLUGINS``
(``VLLM_PLUGINS=adaptive``), which the ``vllm-adaptive serve`` launcher sets.
"""

from __future__ import annotations

from argparse import Namespace
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse

from vllm_adaptive import PLUGIN_NAME, __version__, state

STATUS_PATH = "/v1/adaptive/status"


class AdaptiveEndpointPlugin:
    """Adds ``GET /v1/adaptive/status``: the plugin state of every worker process."""

    name = PLUGIN_NAME
    required_tasks = None

    def attach_router(self, app: FastAPI) -> None:
        router = APIRouter()

        @router.get(STATUS_PATH)
        async def adaptive_status(request: Request) -> JSONResponse:
            engine = request.app.state.adaptive_engine_client
            if engine is None:
                return JSONResponse({"error": "no engine in this server"}, status_code=503)
            workers = await engine.collective_rpc("adaptive_status")
            return JSONResponse(
                {
                    "plugin": PLUGIN_NAME,
                    "version": __version__,
                    "api_server": state.snapshot(),
                    "workers": workers,
                    "active": bool(workers)
                    and all(w.get("plugin_loaded") and w.get("model_class") for w in workers),
                }
            )

        app.include_router(router)

    async def init_state(self, engine_client: Any, app_state: Any, args: Namespace) -> None:
        app_state.adaptive_engine_client = engine_client
