"""Llama with layer skipping and per-layer KV budgets (registered over vLLM's LlamaForCausalLM
by vllm_adaptive.patch)."""

from __future__ import annotations

import copy
import logging
import os
from itertools import islice

import torch
from vllm.config import VllmConfig
from vllm.config.compilation import CompilationMode
from vllm.distributed import get_pp_group
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from vllm.model_executor.models.utils import PPMissingLayer, extract_layer_index
from vllm.sequence import IntermediateTensors

from vllm_adaptive import config as plugin_config
from vllm_adaptive import profiles as profile_files
from vllm_adaptive import state
from vllm_adaptive.kv import KV, Budget, budget_json
from vllm_adaptive.runtime import RUNTIME

# A child of "vllm" so the line appears in vLLM's own log with its handlers.
logger = logging.getLogger("vllm.adaptive")


class AdaptiveLlamaModel(LlamaModel):
    """LlamaModel whose decoder loop skips the layers of each token's profile.

    A batch whose requests share a profile does not run the skipped layers at all (no
    attention, no MLP, no KV write). In a mixed batch a layer that some requests skip runs
    for the whole batch and the skipping tokens keep their input (compute-and-mask): each
    request gets exactly its own profile's result, but that layer costs full price.
    """

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", layer_type: type = LlamaDecoderLayer) -> None:
        budgets = RUNTIME.profiles.kv_layout if RUNTIME.profiles else None
        if budgets is not None and any(b is not KV.FULL for b in budgets):
            layer_type = _budgeted_layer_factory(layer_type, budgets)
        super().__init__(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
        self.layer_calls = [0] * len(self.layers)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None,
        inputs_embeds: torch.Tensor | None = None,
        **extra_layer_kwargs,
    ) -> torch.Tensor | IntermediateTensors:
        if RUNTIME.profiles is None:  # no profiles configured: stock forward
            return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **extra_layer_kwargs)
        if get_pp_group().is_first_rank:
            hidden_states = inputs_embeds if inputs_embeds is not None else self.embed_input_ids(input_ids)
            residual = None
        else:
            assert intermediate_tensors is not None
            hidden_states, residual = intermediate_tensors["hidden_states"], intermediate_tensors["residual"]
        num_tokens = hidden_states.shape[0]
        for idx, layer in enumerate(islice(self.layers, self.start_layer, self.end_layer), start=self.start_layer):
            skip = RUNTIME.skip_mask(idx, num_tokens, hidden_states.device)
            if skip is True:
                continue
            assert not isinstance(layer, PPMissingLayer), f"layer {idx} has no weights/KV but a served profile runs it"
            self.layer_calls[idx] += 1
            new_hidden, new_residual = layer(positions, hidden_states, residual, **extra_layer_kwargs)
            if skip is not False:  # mixed batch: skipping tokens keep their input stream
                keep = skip.unsqueeze(-1)
                old_residual = torch.zeros_like(hidden_states) if residual is None else residual
                new_hidden = torch.where(keep, hidden_states, new_hidden)
                new_residual = torch.where(keep, old_residual, new_residual)
            hidden_states, residual = new_hidden, new_residual
        if not get_pp_group().is_last_rank:
            return IntermediateTensors({"hidden_states": hidden_states, "residual": residual})
        if residual is None:  # every layer skipped for this batch (refused by profile validation)
            return self.norm(hidden_states)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


def _budgeted_layer_factory(layer_type: type, budgets: tuple[Budget, ...]):
    """Decoder layers built with their KV budget: a window W is vLLM's own per-layer sliding
    window (LlamaAttention reads it from `layer_types` of the config it is given, so the layer
    gets a private copy); a layer with no KV is not built (PPMissingLayer: no weights, no KV
    spec, skipped by weight loading), exactly as vLLM leaves out another pipeline stage's layers."""
    def build(*, vllm_config: VllmConfig, prefix: str) -> torch.nn.Module:
        idx = extract_layer_index(prefix)
        budget = budgets[idx]
        if budget is KV.NONE:
            return PPMissingLayer()
        if budget is KV.FULL:
            return layer_type(vllm_config=vllm_config, prefix=prefix)
        hf = vllm_config.model_config.hf_config
        config = copy.copy(hf)
        config.layer_types = ["full_attention"] * hf.num_hidden_layers
        config.layer_types[idx] = "sliding_attention"
        config.sliding_window = budget
        return layer_type(vllm_config=vllm_config, prefix=prefix, config=config)

    return build


def _load_profiles(vllm_config: VllmConfig) -> profile_files.ProfileSet | None:
    """The profile set this engine serves, validated against the model and the engine."""
    hf = vllm_config.model_config.hf_config
    options = plugin_config.from_vllm_config(vllm_config.additional_config)
    if not options.profiles:
        return None
    if vllm_config.compilation_config.mode != CompilationMode.NONE:
        raise ValueError(
            "vllm-adaptive: skip profiles need eager execution (--enforce-eager): "
            "torch.compile would freeze one skip set into the graph and silently ignore "
            "the profile each request asks for"
        )
    served = profile_files.ModelSpec("LlamaForCausalLM", hf.num_hidden_layers, hf.hidden_size)
    table = profile_files.ProfileSet.load(options.profiles, served)
    table, dropped = table.with_default(options.default_profile or table.default, options.profiles)
    if dropped:
        logger.warning(
            "vllm-adaptive: profiles %s are not served: they run layers that the default profile %r "
            "keeps no KV (or weights) for", dropped, table.default,
        )
    max_len = vllm_config.model_config.max_model_len
    too_long = {i: b for i, b in enumerate(table.kv_layout) if isinstance(b, int) and b >= max_len}
    if too_long:
        raise profile_files.ProfileError(
            f"{options.profiles}: profile {table.default!r} gives layers {sorted(too_long)} KV budgets "
            f"{sorted(set(too_long.values()))} of at least max_model_len={max_len} tokens; a budget must be "
            "smaller than the context (or \"full\")"
        )
    return table


class AdaptiveLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama, same weights layout, with per-request skip profiles and per-layer KV budgets."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        hf = vllm_config.model_config.hf_config
        RUNTIME.profiles = _load_profiles(vllm_config)  # read by AdaptiveLlamaModel while it builds
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        state.record_model(type(self).__name__, hf.num_hidden_layers)
        logger.info(
            "vllm-adaptive: %s active in pid %d (%d decoder layers; profiles: %s; KV budgets: %s)",
            type(self).__name__, os.getpid(), hf.num_hidden_layers,
            ", ".join(f"{n}={sorted(p.skip)}" for n, p in RUNTIME.profiles.profiles.items())
            if RUNTIME.profiles else "none",
            [budget_json(b) for b in RUNTIME.profiles.kv_layout] if RUNTIME.profiles else "all full",
        )

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type: type = LlamaDecoderLayer):
        return AdaptiveLlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
