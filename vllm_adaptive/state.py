"""Per-process record of what the plugin did, so tests and the status RPC can prove it.

vLLM loads general plugins separately in each of its processes; a plugin that is
active in the API server but not in the worker that runs the model is a silent
no-op. This module keeps the facts that let us tell the two apart.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from dataclasses import asdict, dataclass, field


@dataclass
class ProcessState:
    """What the plugin did in this process."""

    pid: int = 0
    process_name: str = ""
    loaded_at: float = 0.0
    patches: list[str] = field(default_factory=list)
    model_class: str | None = None
    num_layers: int | None = None


_STATE = ProcessState()


def mark_loaded() -> None:
    """Record that :func:`vllm_adaptive.register` ran in this process."""
    if _STATE.pid != os.getpid():  # first call in this process (or a fork)
        _STATE.pid = os.getpid()
        _STATE.process_name = multiprocessing.current_process().name
        _STATE.loaded_at = time.time()
        _STATE.patches = []


def record_patch(name: str) -> None:
    """Remember that the patch `name` is active in this process."""
    if name not in _STATE.patches:
        _STATE.patches.append(name)


def record_model(model_class: str, num_layers: int) -> None:
    """Remember which architecture this process built its decoder layers for (through the plugin)."""
    _STATE.model_class = model_class
    _STATE.num_layers = num_layers


def snapshot() -> dict:
    """A JSON-safe copy of this process's state."""
    out = asdict(_STATE)
    out["plugin_loaded"] = _STATE.pid == os.getpid()
    out["pid_now"] = os.getpid()
    return out
