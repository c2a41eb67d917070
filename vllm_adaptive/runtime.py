"""Per-step state in the worker: which profile each scheduled token runs with.

vLLM's model runner decides the batch layout (request order, tokens per request) just
before the forward pass; the patched `_prepare_inputs` (see vllm_adaptive.patch) reports
it here, and the adaptive model reads it layer by layer. Profiles are taken from the
request's `SamplingParams.extra_args` and fixed for the request's life (as in FiRST), so
a request never reads KV of a layer it skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vllm_adaptive.config import REQUEST_PROFILE_KEY
from vllm_adaptive.profiles import ProfileSet

log = logging.getLogger("vllm.adaptive")


@dataclass
class BatchPlan:
    """The layout of one forward step, as the model needs it."""

    num_tokens: int = 0
    uniform: str | None = None  # every token runs this profile
    token_profiles: np.ndarray | None = None  # per token, index into `names` (mixed batches)
    names: list[str] = field(default_factory=list)
    # Mixed batches: the mask of each distinct "which names skip this layer" pattern, built once
    # per step (and per padded size) instead of once per layer.
    masks: dict[tuple[tuple[bool, ...], int], bool | torch.Tensor] = field(default_factory=dict)


class Runtime:
    """Profile table of the loaded model plus the plan of the current step."""

    def __init__(self) -> None:
        self.profiles: ProfileSet | None = None
        self.plan = BatchPlan()
        self._warned: set[str] = set()

    def profile_name(self, extra_args: dict[str, Any] | None) -> str:
        """Profile a request asked for, or the default (an unknown name is logged, once)."""
        assert self.profiles is not None
        name = (extra_args or {}).get(REQUEST_PROFILE_KEY)
        if name is None or name in self.profiles.profiles:
            return self.profiles.default if name is None else name
        if name not in self._warned:
            self._warned.add(name)
            log.warning("vllm-adaptive: unknown profile %r requested; serving %r", name, self.profiles.default)
        return self.profiles.default

    def plan_batch(self, extra_args: Sequence[dict[str, Any] | None], num_scheduled: np.ndarray) -> None:
        """Record the profile of every token of the coming step (requests in batch order)."""
        if self.profiles is None:
            return
        per_request = [self.profile_name(a) for a in extra_args]
        names = sorted(set(per_request))
        if len(names) <= 1:
            self.plan = BatchPlan(int(num_scheduled.sum()), names[0] if names else self.profiles.default)
            return
        index = {n: i for i, n in enumerate(names)}
        tokens = np.repeat(np.array([index[n] for n in per_request]), num_scheduled)
        self.plan = BatchPlan(len(tokens), None, tokens, names)

    def skip_mask(self, layer: int, num_tokens: int, device: torch.device) -> bool | torch.Tensor:
        """True: skip `layer` for all tokens; False: run it for all; a bool tensor: skip per token."""
        assert self.profiles is not None
        plan = self.plan
        if plan.uniform is not None or plan.token_profiles is None or plan.num_tokens > num_tokens:
            name = plan.uniform if plan.uniform is not None and plan.num_tokens <= num_tokens else self.profiles.default
            return layer in self.profiles.get(name).skip
        pattern = tuple(layer in self.profiles.get(n).skip for n in plan.names)
        key = (pattern, num_tokens)
        if key not in plan.masks:
            plan.masks[key] = self._mask(np.array(pattern)[plan.token_profiles], num_tokens, device)
        return plan.masks[key]

    @staticmethod
    def _mask(per_token: np.ndarray, num_tokens: int, device: torch.device) -> bool | torch.Tensor:
        if not per_token.any():
            return False
        if per_token.all() and len(per_token) == num_tokens:
            return True
        mask = np.zeros(num_tokens, dtype=bool)  # padding tokens (beyond the plan) run the layer
        mask[: len(per_token)] = per_token
        return torch.from_numpy(mask).to(device)


RUNTIME = Runtime()
