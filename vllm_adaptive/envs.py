"""Environment variables read by vllm-adaptive (the one place that reads them).

VLLM_ADAPTIVE_HOME   where converted models and other caches live
                     (default: ~/.cache/vllm-adaptive).
"""

from __future__ import annotations

import os
from pathlib import Path

#: Variables that keep transformers / huggingface_hub from ever reaching the hub.
OFFLINE_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}


def home() -> Path:
    """Root of vllm-adaptive's caches."""
    return Path(os.environ.get("VLLM_ADAPTIVE_HOME", Path.home() / ".cache" / "vllm-adaptive"))


def set_offline() -> None:
    """Forbid hub downloads in this process and its children (no weights are fetched at run time)."""
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)
