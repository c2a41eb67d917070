"""Worker-side RPC methods (attached to vLLM's worker by :mod:`vllm_adaptive.patch`)."""

from __future__ import annotations

from typing import Any

from vllm_adaptive import state
from vllm_adaptive.models.layers import stacks


def adaptive_status(self: Any) -> dict:
    """Plugin state of the process that runs the model (called via collective_rpc)."""
    out = state.snapshot()
    model = self.get_model()
    out["runtime_model_class"] = type(model).__name__
    found = stacks(model)
    out["stacks"] = [s.to_json() for s in found]
    main = found[0] if found else None
    out["layer_calls"] = list(main.plan.calls) if main is not None and main.plan is not None else []
    out["steps"] = dict(main.plan.steps) if main is not None and main.plan is not None else {}
    out["profiles"] = main.profiles.to_json() if main is not None else None
    return out
