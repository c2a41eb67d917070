"""Llama with layer skipping (registered over vLLM's LlamaForCausalLM by vllm_adaptive.patch)."""

from __future__ import annotations

import logging
import os
from itertools import islice

import torch
from vllm.config import VllmConfig
from vllm.config.compilation import CompilationMode
from vllm.distributed import get_pp_group
from vllm.model_executor.models.llama import LlamaDecoderLayer, LlamaForCausalLM, LlamaModel
from vllm.sequence import IntermediateTensors

from vllm_adaptive import config as plugin_config
from vllm_adaptive import profiles as profile_files
from vllm_adaptive import state
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


class AdaptiveLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama, same weights layout, with per-request skip profiles."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        hf = vllm_config.model_config.hf_config
        options = plugin_config.from_vllm_config(vllm_config.additional_config)
        if options.profiles:
            if vllm_config.compilation_config.mode != CompilationMode.NONE:
                raise ValueError(
                    "vllm-adaptive: skip profiles need eager execution (--enforce-eager): "
                    "torch.compile would freeze one skip set into the graph and silently ignore "
                    "the profile each request asks for"
                )
            table = profile_files.load(options.profiles, "LlamaForCausalLM", hf.num_hidden_layers, hf.hidden_size)
            if options.default_profile is not None:
                if options.default_profile not in table.profiles:
                    raise profile_files.ProfileError(
                        f"default profile {options.default_profile!r} is not in {options.profiles} "
                        f"(has {sorted(table.profiles)})"
                    )
                table = profile_files.ProfileSet(table.num_layers, options.default_profile, table.profiles)
            RUNTIME.profiles = table
        state.record_model(type(self).__name__, hf.num_hidden_layers)
        logger.info(
            "vllm-adaptive: %s active in pid %d (%d decoder layers; profiles: %s)",
            type(self).__name__, os.getpid(), hf.num_hidden_layers,
            ", ".join(f"{n}={sorted(p.skip)}" for n, p in RUNTIME.profiles.profiles.items())
            if RUNTIME.profiles else "none",
        )

    def _init_model(self, vllm_config: VllmConfig, prefix: str = "", layer_type: type = LlamaDecoderLayer):
        return AdaptiveLlamaModel(vllm_config=vllm_config, prefix=prefix, layer_type=layer_type)
