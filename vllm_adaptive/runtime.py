"""The step plan of one adaptive model: which layers each scheduled token runs in this step.

vLLM's model runner decides the batch layout (request order, tokens per request) just before
the forward pass; the patched `_prepare_inputs` (see vllm_adaptive.patch) hands it to the plan
of the model *that runner* holds, which resolves every layer's action once for the step. The
plan lives on the model's layer stack (`layers.adaptive`), never in module globals, so two
models in one process (a draft model, two engines) each keep their own. Profiles come from the
request's `SamplingParams.extra_args` and are fixed for the request's life (as in FiRST), so a
request never reads KV of a layer it skipped.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from vllm_adaptive.config import REQUEST_PROFILE_KEY
from vllm_adaptive.profiles import ProfileSet

log = logging.getLogger("vllm.adaptive")

#: A layer's action in one step: False = run for every token, True = skip for every token,
#: an int = mixed batch, index of the per-token skip pattern (compute-and-mask).
Action = bool | int


def requested(extra_args: dict[str, Any] | None) -> str | None:
    """The profile a request names in its `SamplingParams.extra_args` (None: none)."""
    return (extra_args or {}).get(REQUEST_PROFILE_KEY)


def served_as(name: str | None, default: str, served: Collection[str]) -> str:
    """The profile that serves a request naming `name`: itself if served, else the default."""
    return name if name is not None and name in served else default


class StepPlan:
    """Per-layer actions of the current step, for one model's profile table."""

    def __init__(self, profiles: ProfileSet) -> None:
        self.profiles = profiles
        n = profiles.num_layers
        #: Executions of each layer (mixed batches count once): proves what ran.
        self.calls = [0] * n
        #: Steps planned with one profile / mixing profiles (the latter run masked).
        self.steps = {"uniform": 0, "mixed": 0}
        self._uniform = {name: tuple(i in p.skip for i in range(n)) for name, p in profiles.profiles.items()}
        self._warned: set[str] = set()
        self.num_tokens = 0
        #: The one profile of this step's requests; None when the step mixes profiles.
        self.profile: str | None = profiles.default
        self.actions: tuple[Action, ...] = self._uniform[profiles.default]
        self._patterns: list[np.ndarray] = []  # mixed batches: per token, skip this pattern's layers?
        self._masks: dict[tuple[int, int], torch.Tensor] = {}

    def profile_name(self, extra_args: dict[str, Any] | None) -> str:
        """Profile a request asked for, or the default (an unknown name is logged, once)."""
        name = requested(extra_args)
        served = served_as(name, self.profiles.default, self.profiles.profiles)
        if name is None or served == name:
            return served
        if name not in self._warned:
            self._warned.add(name)
            log.warning("vllm-adaptive: profile %r is not served by this engine (serving %s); serving %r",
                        name, sorted(self.profiles.profiles), self.profiles.default)
        return self.profiles.default

    def plan_batch(self, extra_args: Sequence[dict[str, Any] | None], num_scheduled: np.ndarray) -> None:
        """Resolve every layer's action for the coming step (requests in batch order)."""
        per_request = [self.profile_name(a) for a in extra_args]
        names = sorted(set(per_request))
        self._masks.clear()
        self._patterns = []
        self.steps["uniform" if len(names) <= 1 else "mixed"] += 1
        if len(names) <= 1:
            self._set_uniform(names[0] if names else self.profiles.default, int(num_scheduled.sum()))
            return
        self.profile = None
        index = {n: i for i, n in enumerate(names)}
        tokens = np.repeat(np.array([index[n] for n in per_request]), num_scheduled)
        self.num_tokens = len(tokens)
        seen: dict[tuple[bool, ...], Action] = {}
        actions: list[Action] = []
        for layer in range(self.profiles.num_layers):
            pattern = tuple(self._uniform[n][layer] for n in names)
            if pattern not in seen:
                if all(pattern) or not any(pattern):
                    seen[pattern] = pattern[0]
                else:
                    seen[pattern] = len(self._patterns)
                    self._patterns.append(np.array(pattern)[tokens])
            actions.append(seen[pattern])
        self.actions = tuple(actions)

    def _set_uniform(self, name: str, num_tokens: int) -> None:
        self.num_tokens, self.profile, self.actions = num_tokens, name, self._uniform[name]

    @contextmanager
    def warming(self, name: str) -> Iterator[None]:
        """Runs of any size inside the block are steps of profile `name` (start-up compiles of
        each profile's view); the default afterwards."""
        self._set_uniform(name, 0)
        try:
            yield
        finally:
            self._set_uniform(self.profiles.default, 0)

    def step_profile(self, num_tokens: int) -> str | None:
        """The profile every token of a run of `num_tokens` tokens follows (None: mixed step)."""
        return self.profiles.default if self._dummy(num_tokens) else self.profile

    def _dummy(self, num_tokens: int) -> bool:
        """A run smaller than the planned step is a dummy/profiling run: it follows the default."""
        return num_tokens < self.num_tokens

    def action(self, layer: int, num_tokens: int, device: torch.device) -> bool | torch.Tensor:
        """True: skip `layer` for all tokens; False: run it for all; a bool tensor: skip per token."""
        if self._dummy(num_tokens):
            return self._uniform[self.profiles.default][layer]
        act = self.actions[layer]
        if isinstance(act, bool):
            return act
        key = (act, num_tokens)
        if key not in self._masks:  # once per pattern and step; padding tokens (beyond the plan) run
            mask = np.zeros(num_tokens, dtype=bool)
            mask[: self.num_tokens] = self._patterns[act]
            self._masks[key] = torch.from_numpy(mask).to(device)
        return self._masks[key]
