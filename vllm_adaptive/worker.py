"""Worker-side RPC methods (attached to vLLM's worker by :mod:`vllm_adaptive.patch`)."""

from __future__ import annotations

from typing import Any

from vllm_adaptive import state
from vllm_adaptive.runtime import RUNTIME


def adaptive_status(self: Any) -> dict:
    """Plugin state of the process that runs the model (called via collective_rpc)."""
    out = state.snapshot()
    model = self.get_model()
    out["runtime_model_class"] = type(model).__name__
    inner = getattr(model, "model", None)
    out["layer_calls"] = list(getattr(inner, "layer_calls", []))
    out["profiles"] = RUNTIME.profiles.to_json() if RUNTIME.profiles else None
    return out
