"""The plugin's options, from vLLM's `--additional-config` (key "adaptive") or the environment.

    vllm serve MODEL \\
        --additional-config '{"adaptive": {"profiles": "profiles.json", "default_profile": "fast"}}'

or `VLLM_ADAPTIVE_PROFILES=profiles.json VLLM_ADAPTIVE_DEFAULT_PROFILE=fast`; `"serve": ["fast", "full"]`
(`VLLM_ADAPTIVE_SERVE=fast,full`) limits the profiles served (a compiled engine compiles one view each). The additional
config is the vLLM-idiomatic way: it is part of vLLM's config hash, so a compiled graph is
never reused for other plugin settings. A request picks a profile with the OpenAI field
`"vllm_xargs": {"adaptive_profile": "NAME"}`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

CONFIG_KEY = "adaptive"
#: The per-request field (SamplingParams.extra_args / OpenAI `vllm_xargs`).
REQUEST_PROFILE_KEY = "adaptive_profile"


@dataclass(frozen=True)
class AdaptiveOptions:
    """Where the profiles come from and which one serves requests that name none."""

    profiles: str | None = None
    default_profile: str | None = None
    #: Profiles this engine serves (default: every profile of the file). A compiled engine compiles
    #: one view per served profile at start-up, so naming the few it needs saves start-up time.
    serve: tuple[str, ...] = ()


def from_vllm_config(additional_config: Any) -> AdaptiveOptions:
    """Options from `--additional-config`, falling back to VLLM_ADAPTIVE_* env vars."""
    section = (additional_config or {}).get(CONFIG_KEY, {}) if isinstance(additional_config, dict) else {}
    # "served" is written by the plugin itself while the model is built (vllm_adaptive.models.layers):
    # the resolved layout, so that it is part of vLLM's config hash and compile-cache key.
    unknown = set(section) - {"profiles", "default_profile", "serve", "served"}
    if unknown:
        raise ValueError(f"unknown --additional-config adaptive options: {sorted(unknown)}")
    return AdaptiveOptions(
        profiles=section.get("profiles") or os.environ.get("VLLM_ADAPTIVE_PROFILES") or None,
        default_profile=section.get("default_profile") or os.environ.get("VLLM_ADAPTIVE_DEFAULT_PROFILE") or None,
        serve=_names(section.get("serve") or os.environ.get("VLLM_ADAPTIVE_SERVE") or ()),
    )


def _names(value: Any) -> tuple[str, ...]:
    """Profile names from a list or a comma-separated string."""
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(n, str) for n in items):
        raise ValueError(f"--additional-config adaptive.serve must be a list of profile names, not {value!r}")
    return tuple(n.strip() for n in items if n.strip())
