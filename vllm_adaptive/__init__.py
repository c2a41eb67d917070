"""vllm-adaptive: the `adaptive` vLLM plugin.

vLLM calls :func:`register` (entry point ``vllm.general_plugins:adaptive``) once in
every process it starts: the API server, the EngineCore and each worker. All
changes to vLLM go through :mod:`vllm_adaptive.patch`, so this module only
records which process loaded the plugin and applies that registry.
"""

from __future__ import annotations

__version__ = "0.1.0"

PLUGIN_NAME = "adaptive"


def register() -> None:
    """Entry point of the ``vllm.general_plugins`` group (must be idempotent)."""
    from vllm_adaptive import state
    from vllm_adaptive.patch import apply_all

    state.mark_loaded()
    apply_all()
