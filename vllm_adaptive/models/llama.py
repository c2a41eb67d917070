"""Llama with the adaptive plugin's hooks (registered over vLLM's LlamaForCausalLM)."""

from __future__ import annotations

import logging
import os

from vllm.config import VllmConfig
from vllm.model_executor.models.llama import LlamaForCausalLM

from vllm_adaptive import state

# A child of "vllm" so the line appears in vLLM's own log with its handlers.
logger = logging.getLogger("vllm.adaptive")


class AdaptiveLlamaForCausalLM(LlamaForCausalLM):
    """vLLM's Llama, same weights layout; records that the plugin's class is the one running."""

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = "", **kwargs) -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix, **kwargs)
        num_layers = vllm_config.model_config.hf_config.num_hidden_layers
        state.record_model(type(self).__name__, num_layers)
        logger.info(
            "vllm-adaptive: %s active in pid %d (%d decoder layers)",
            type(self).__name__,
            os.getpid(),
            num_layers,
        )
