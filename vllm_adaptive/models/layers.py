"""Layer skipping and per-layer KV budgets for any decoder whose layers pass a residual stream.

vLLM builds the decoder layers of Llama, Mistral, Qwen2/3, Gemma3 (and most others) with
`make_layers(num_layers, layer_fn, prefix)` and runs them as
`hidden_states, residual = layer(positions, hidden_states, residual, ...)`, where the stream is
`hidden_states + residual` (fused add-RMSNorm). So a layer that returns its `(hidden_states,
residual)` unchanged is an exact identity, for every such architecture, without copying any
model's forward. The plugin wraps `make_layers` (vllm_adaptive.patch) and, when the engine
serves skip profiles:

* layers the default profile skips are built as `SkippedLayer`: no weights, no attention, no KV
  (a `PPMissingLayer`, so weight loading leaves them out), and the stock loop stays static, so
  torch.compile traces it (fewer graph pieces, nothing read at run time);
* in eager mode with several profiles, the other layers become `SkippableLayer`s that read the
  action the model's `StepPlan` resolved for this step (skip, run, or compute-and-mask);
  compiled engines serve the other profiles through compiled views instead (vllm_adaptive.models.views);
* each attention layer gets its KV budget while it is built (`budget_attention`, called from the
  `Attention.__init__` patch): a window W of a layer that already slides over V tokens is min(V, W).

Anything else is refused at start-up with the reason (never silently served stock).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

import torch
from vllm.config import VllmConfig
from vllm.config.compilation import CompilationMode
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index

from vllm_adaptive import config as plugin_config
from vllm_adaptive import state
from vllm_adaptive.kv import KV, Budget, SinkWindow, budget_json, span
from vllm_adaptive.profiles import ModelSpec, ProfileError, ProfileSet
from vllm_adaptive.runtime import StepPlan

# A child of "vllm" so the line appears in vLLM's own log with its handlers.
logger = logging.getLogger("vllm.adaptive")

#: The call signature the skip identity relies on (after `self`).
LAYER_ARGS = ("positions", "hidden_states", "residual")


class UnsupportedModel(ValueError):
    """A model the plugin cannot skip layers of (or budget KV for); the message says why."""


class SkippedLayer(PPMissingLayer):
    """A decoder layer that the engine's default profile skips: nothing built, no KV. It passes
    the residual stream through (stock `PPMissingLayer` would return `positions`)."""

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        return hidden_states, residual


def run_planned(plan: StepPlan, idx: int, layer: Callable, positions: torch.Tensor, hidden_states: torch.Tensor,
                residual: torch.Tensor | None, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run, skip or mask decoder layer `idx` (called as `layer`) as the step plan says."""
    skip = plan.action(idx, hidden_states.shape[0], hidden_states.device)
    if skip is True:
        return hidden_states, residual
    plan.calls[idx] += 1
    new_hidden, new_residual = layer(positions, hidden_states, residual, *args, **kwargs)
    if skip is False:
        return new_hidden, new_residual
    keep = skip.unsqueeze(-1)  # mixed batch: skipping tokens keep their input stream
    old_residual = torch.zeros_like(hidden_states) if residual is None else residual
    return torch.where(keep, hidden_states, new_hidden), torch.where(keep, old_residual, new_residual)


class SkippableLayer(torch.nn.Module):
    """Mixin put in front of a decoder layer's class: runs, skips or masks the layer as the
    model's step plan says (eager engines serving several profiles)."""

    adaptive_plan: StepPlan
    adaptive_index: int

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor, residual: torch.Tensor | None,
                *args, **kwargs):
        return run_planned(self.adaptive_plan, self.adaptive_index, super().forward, positions, hidden_states,
                           residual, *args, **kwargs)


_SKIPPABLE: dict[type, type] = {}


def make_skippable(layer: torch.nn.Module, plan: StepPlan, index: int) -> None:
    """Give `layer` the SkippableLayer behaviour in place (same parameters and names)."""
    cls = type(layer)
    if cls not in _SKIPPABLE:
        _SKIPPABLE[cls] = type(f"Skippable{cls.__name__}", (SkippableLayer, cls), {})
    layer.__class__ = _SKIPPABLE[cls]
    layer.adaptive_plan = plan
    layer.adaptive_index = index


@dataclass
class AdaptiveStack:
    """What the plugin did to one model's layer stack (kept on the stack as `layers.adaptive`)."""

    architecture: str
    profiles: ProfileSet
    compiled: bool
    plan: StepPlan | None  # None: one profile served, nothing to decide per step
    missing: tuple[int, ...]
    kv_windows: dict[int, Budget] = field(default_factory=dict)  # effective budget of each built layer
    #: Compiled engines: seconds each profile's compiled view took to compile and warm up at start-up
    #: (vllm_adaptive.models.views; None: compiled at first use).
    views: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"architecture": self.architecture, "compiled": self.compiled, "per_request": self.plan is not None,
                "views": dict(self.views),
                "missing_layers": list(self.missing),
                "kv_windows": {str(i): budget_json(b) for i, b in sorted(self.kv_windows.items())},
                "profiles": self.profiles.to_json()}


@dataclass
class _Build:
    """The stack being built (read by the Attention hook while a layer of it is constructed)."""

    stack: AdaptiveStack
    layer: int = -1


_BUILDING: ContextVar[_Build | None] = ContextVar("vllm_adaptive_building", default=None)


def served_profiles(vllm_config: VllmConfig, num_layers: int, log: bool = True) -> ProfileSet | None:
    """The profile set this engine serves for a stack of `num_layers` layers (None: no profiles,
    or a stack other than the text decoder's), validated against the model and the engine; `log`:
    warn about the profiles left out (once, when the model is built)."""
    options = plugin_config.from_vllm_config(vllm_config.additional_config)
    model_config = vllm_config.model_config
    if not options.profiles or model_config is None:
        return None
    text = model_config.hf_text_config
    if num_layers != text.num_hidden_layers:
        return None
    architecture = model_config.architectures[0]
    if model_config.is_hybrid or model_config.is_attention_free:
        raise UnsupportedModel(
            f"vllm-adaptive: {architecture} is a hybrid / attention-free model (Mamba or linear-attention "
            "layers keep recurrent state that a skipped layer would leave stale); skip profiles and KV "
            "budgets support attention decoders only")
    spec = ModelSpec(architecture, num_layers, text.hidden_size)
    table = ProfileSet.load(options.profiles, spec)
    table, dropped = table.with_default(options.default_profile or table.default, options.profiles)
    if dropped and log:
        logger.warning("vllm-adaptive: profiles %s are not served: they run layers that the default profile %r "
                       "keeps no KV (or weights) for", dropped, table.default)
    max_len = model_config.max_model_len
    too_long = {i: budget_json(b) for i, b in enumerate(table.kv_layout) if (span(b) or 0) >= max_len}
    if too_long:
        raise ProfileError(
            f"{options.profiles}: profile {table.default!r} gives layers {sorted(too_long)} KV budgets "
            f"{list(too_long.values())} spanning at least max_model_len={max_len} tokens; a budget must be "
            "smaller than the context (or \"full\")")
    sinks = sorted(i for i, b in enumerate(table.kv_layout) if isinstance(b, SinkWindow))
    if sinks:
        check_sink_layers(vllm_config, f"{options.profiles}: profile {table.default!r} gives layers {sinks} "
                          "sink + window KV budgets")
    if options.serve:
        table = table.only(options.serve, options.profiles)
    if _compiled(vllm_config) and len(table.profiles) > 1 and not _on_cpu():
        if log:
            logger.warning("vllm-adaptive: compiled engine on a GPU: serving only the default profile %r; per-request "
                           "profiles need a CUDA-graph set per profile view, which is not built "
                           "(docs/compiled-views.md); use --enforce-eager, or one compiled server per profile",
                           table.default)
        table = replace(table, profiles={table.default: table.get(None)})
    return table


def _on_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _compiled(vllm_config: VllmConfig) -> bool:
    return vllm_config.compilation_config.mode != CompilationMode.NONE


def adaptive_make_layers(original: Callable) -> Callable:
    """`make_layers` that builds the text decoder's layers as the served profiles need."""
    from vllm.config import get_current_vllm_config_or_none

    def make_layers(num_hidden_layers: int, layer_fn: Callable, prefix: str):
        vllm_config = get_current_vllm_config_or_none()
        table = served_profiles(vllm_config, num_hidden_layers) if vllm_config is not None else None
        if table is None:
            if vllm_config is not None and vllm_config.model_config is not None and \
                    num_hidden_layers == vllm_config.model_config.hf_text_config.num_hidden_layers:
                state.record_model(vllm_config.model_config.architectures[0], num_hidden_layers)
            return original(num_hidden_layers, layer_fn, prefix)
        default = table.get(None)
        compiled = _compiled(vllm_config)
        plan = StepPlan(table) if len(table.profiles) > 1 else None
        stack = AdaptiveStack(vllm_config.model_config.architectures[0], table, compiled, plan, tuple(sorted(default.skip)))
        build = _Build(stack)

        def build_layer(*, prefix: str) -> torch.nn.Module:
            idx = extract_layer_index(prefix)
            if idx in default.skip:
                return SkippedLayer()
            build.layer = idx
            token = _BUILDING.set(build)
            try:
                layer = layer_fn(prefix=prefix)
            finally:
                _BUILDING.reset(token)
            check_layer(stack.architecture, layer)
            if plan is not None and not compiled:  # compiled: one view per profile (models.views)
                make_skippable(layer, plan, idx)
            return layer

        start, end, layers = original(num_hidden_layers, build_layer, prefix)
        layers.adaptive = stack
        state.record_model(stack.architecture, num_hidden_layers)
        # Part of vLLM's config hash, so the compile cache never serves a graph of another layout.
        vllm_config.additional_config.setdefault(plugin_config.CONFIG_KEY, {})["served"] = {
            "default": table.default, "skip": sorted(default.skip),
            "kv": [budget_json(b) for b in table.kv_layout], "per_request": plan is not None}
        logger.info("vllm-adaptive: %s layers at %s: %s; profiles %s (default %r); missing layers %s; "
                    "KV windows %s", stack.architecture, prefix, "compiled" if compiled else "eager",
                    {n: sorted(p.skip) for n, p in table.profiles.items()}, table.default, list(stack.missing),
                    {i: budget_json(b) for i, b in sorted(stack.kv_windows.items()) if b is not KV.FULL} or "all full")
        return start, end, layers

    make_layers.__wrapped__ = original  # type: ignore[attr-defined]
    return make_layers


def check_layer(architecture: str, layer: torch.nn.Module) -> None:
    """Refuse layers for which returning `(hidden_states, residual)` is not an identity."""
    params = list(inspect.signature(type(layer).forward).parameters)[1:4]
    if tuple(params) != LAYER_ARGS:
        raise UnsupportedModel(
            f"vllm-adaptive: {architecture} cannot be served with skip profiles: its decoder layers "
            f"({type(layer).__name__}) take ({', '.join(params)}), not ({', '.join(LAYER_ARGS)}); "
            "a layer that returns one tensor has no residual stream to pass through unchanged")


def budget_attention(prefix: str, per_layer_sliding_window: int | None, native_window: int | None,
                     kv_sharing_target_layer_name: str | None) -> int | SinkWindow | None:
    """The sliding window (or sink + window) to build an attention layer with (called from the
    Attention.__init__ hook). A layer that already slides over V tokens keeps a plain window of at
    most V: sinks would add keys the model never attends to there.

    Outside a served stack: unchanged, but decoder attention outside any stack while profiles
    are configured means the model builds its layers some other way: refused."""
    build = _BUILDING.get()
    if build is None:
        from vllm.config import get_current_vllm_config_or_none

        cfg = get_current_vllm_config_or_none()
        if cfg is not None and plugin_config.from_vllm_config(cfg.additional_config).profiles \
                and cfg.model_config is not None and not _stack_built(cfg):
            raise UnsupportedModel(
                f"vllm-adaptive: {cfg.model_config.architectures[0]} builds its attention layer {prefix!r} outside "
                "vLLM's make_layers, so the plugin cannot skip its layers or budget their KV")
        return per_layer_sliding_window
    stack = build.stack
    if kv_sharing_target_layer_name is not None:
        raise UnsupportedModel(
            f"vllm-adaptive: {stack.architecture} shares KV between layers ({prefix} reads "
            f"{kv_sharing_target_layer_name}); skipping or budgeting one layer would change another's KV")
    budget = stack.profiles.kv_layout[build.layer]
    if budget is KV.FULL:
        stack.kv_windows[build.layer] = native_window if native_window is not None else KV.FULL
        return per_layer_sliding_window
    if isinstance(budget, SinkWindow):
        window = budget if native_window is None else min(native_window, budget.window)
    else:
        window = budget if native_window is None else min(native_window, budget)
    stack.kv_windows[build.layer] = window
    return window


def check_sink_layers(vllm_config: VllmConfig, what: str) -> None:
    """Refuse an engine whose sink + window layers would not be served as their budget says."""
    cache, scheduler = vllm_config.cache_config, vllm_config.scheduler_config
    if not _on_cpu():
        raise ProfileError(f"{what}, whose attention the plugin implements on vLLM's CPU backend only "
                           "(docs/kv-sinks-gpu.md: the CUDA design); use plain window budgets on this platform")
    if cache.enable_prefix_caching:
        raise ProfileError(f"{what}; prefix caching is not supported on such layers (vLLM's sliding-window "
                           "cache-hit search fills a hit's head with null blocks, dropping the sinks): start "
                           "vLLM with --no-enable-prefix-caching")
    if cache.cache_dtype != "auto":
        raise ProfileError(f"{what}; their attention reads KV in the model's dtype, not {cache.cache_dtype!r}: "
                           "drop --kv-cache-dtype")
    if scheduler.disable_hybrid_kv_cache_manager:
        raise ProfileError(f"{what}; only vLLM's hybrid KV-cache manager frees their blocks: drop "
                           "--disable-hybrid-kv-cache-manager")


def _stack_built(vllm_config: VllmConfig) -> bool:
    """Whether this engine's text decoder stack was already built by the plugin (attention built
    after it, e.g. a draft head, is not part of it)."""
    return "served" in (vllm_config.additional_config or {}).get(plugin_config.CONFIG_KEY, {})


def stacks(model: torch.nn.Module) -> list[AdaptiveStack]:
    """The adaptive layer stacks inside a model (one for a plain decoder)."""
    return [m.adaptive for m in model.modules() if isinstance(getattr(m, "adaptive", None), AdaptiveStack)]
