"""KV-cache spec and manager of sink + window layers (the first S tokens and the latest W).

vLLM's `SlidingWindowManager` frees a layer's blocks from the head of the sequence once they
fall out of the window; here the first ceil(S / block) blocks (the sinks) stay and only the blocks
between them and the window are freed (replaced by the null block in the request's table, as
vLLM's R-SWA manager does for its middle gap). The attention that reads them is
`vllm_adaptive.attention.sink_window`.

Prefix caching is refused for these layers (`vllm_adaptive.models.layers`): vLLM's sliding-window
cache-hit search fills a hit's head with null blocks, which would drop the sinks.

Registered with vLLM's KV-spec registry by `register()` (called from the plugin in every process:
the engine core checks the specs it receives). Written against vLLM 0.32.0.
"""

from __future__ import annotations

from dataclasses import dataclass

from vllm.utils.math_utils import cdiv
from vllm.v1.core.single_type_kv_cache_manager import SlidingWindowManager
from vllm.v1.kv_cache_interface import KVCacheSpec, SlidingWindowSpec


@dataclass(frozen=True, kw_only=True)
class SinkWindowSpec(SlidingWindowSpec):
    """A sliding window of `sliding_window` tokens plus the sequence's first `sink_tokens`."""

    sink_tokens: int

    @property
    def sink_blocks(self) -> int:
        return cdiv(self.sink_tokens, self.block_size)

    def max_admission_blocks_per_request(self, max_in_flight_tokens: int, max_model_len: int) -> int:
        """The window's cap (vLLM's, which sizes the pool and gates admission) plus the sink
        blocks, never more than a whole context."""
        window = super().max_admission_blocks_per_request(max_in_flight_tokens, max_model_len)
        return min(self.sink_blocks + window, cdiv(max_model_len, self.block_size))

    def is_uniform_with_collection(self, kv_cache_specs: dict[str, KVCacheSpec]) -> bool:
        return all(isinstance(s, SinkWindowSpec) and s.sliding_window == self.sliding_window
                   and s.sink_tokens == self.sink_tokens for s in kv_cache_specs.values())


class SinkWindowManager(SlidingWindowManager):
    """Frees the blocks between a request's sink blocks and its window."""

    def __init__(self, kv_cache_spec: SinkWindowSpec, **kwargs) -> None:
        super().__init__(kv_cache_spec, **kwargs)
        self.sink_blocks = kv_cache_spec.sink_blocks

    def get_num_skipped_tokens(self, num_computed_tokens: int) -> int:
        """No head prefix is ever skipped (the sinks are the head): vLLM's allocation paths that
        pad a skipped head with null blocks must allocate it."""
        return 0

    def remove_skipped_blocks(self, request_id: str, processed_computed_tokens: int,
                              num_prompt_tokens: int | None = None) -> None:
        window_start = SlidingWindowManager.get_num_skipped_tokens(self, processed_computed_tokens)
        self._remove_blocks_in_range(request_id, self.sink_blocks, window_start // self.block_size)


def register() -> None:
    """Register the spec and its manager with vLLM's registry, after vLLM's own specs: the registry
    registers the built-ins only while it is empty, so registering first would leave them out."""
    from vllm.v1.kv_cache_spec_registry import KVCacheSpecRegistry

    KVCacheSpecRegistry._ensure_registered()
    KVCacheSpecRegistry.register(SinkWindowSpec, SinkWindowManager, uniform_type_base_spec=SinkWindowSpec)
