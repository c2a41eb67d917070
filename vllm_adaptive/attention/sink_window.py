"""Sink + window attention on vLLM's CPU backend (StreamingLLM masks in paged KV).

A layer with a `SinkWindow(S, W)` budget lets the query at position q see key k when
`k <= q and (k < S or q - k < W)`. vLLM's CPU kernel masks one window (`q - k < W`) and returns
no log-sum-exp, so two kernel calls cannot be merged into this union; instead this path gathers
each sequence's sink blocks and the blocks its window covers from the paged cache and attends
over them with the exact mask (`_attend`). It never reads the blocks between
the sinks and the window, which `SinkWindowManager` frees (their table entries are the null block).

The layer's KV is written and read by this module alone, in a plain layout (per block and KV head:
`block_size` keys, then `block_size` values, as vLLM's own CPU cache tensor is shaped), so it does
not depend on how the CPU kernel packs KV for its ISA (AMX, AVX-512, ...). The attention runs
inside vLLM's attention custom op, which compiled graphs call as an opaque op: it works under
torch.compile unchanged.

Written against vLLM 0.32.0 (`vllm.v1.attention.backends.cpu_attn`).
"""

from __future__ import annotations

import torch
from vllm.v1.attention.backends.cpu_attn import (
    CPUAttentionBackend,
    CPUAttentionBackendImpl,
    CPUAttentionMetadata,
)


def split_cache(kv_cache: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Key and value views, each [num_blocks, num_kv_heads, block_size, head_size], of vLLM's CPU
    cache tensor [num_blocks, num_kv_heads, block_size, 2 * head_size] (same split as the kernel's)."""
    blocks, heads, block_size, _ = kv_cache.shape
    return kv_cache.view(blocks, heads, block_size * 2, -1).chunk(2, dim=2)


def write_kv(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Store each token's key and value [tokens, kv_heads, head] at its slot (block * size + offset);
    slots < 0 are padding."""
    n = min(key.shape[0], slot_mapping.shape[0])
    keep = slot_mapping[:n] >= 0
    slots = slot_mapping[:n][keep]
    block_size = key_cache.shape[2]
    blocks, offsets = slots // block_size, slots % block_size
    key_cache[blocks, :, offsets] = key[:n][keep].to(key_cache.dtype)
    value_cache[blocks, :, offsets] = value[:n][keep].to(value_cache.dtype)


def _attend(query: torch.Tensor, positions: torch.Tensor, table: torch.Tensor, block_ids: torch.Tensor,
            last_block: torch.Tensor, kv_blocks: torch.Tensor, sink: int, window: int, scale: float) -> torch.Tensor:
    """Attention of `query` [B, q_heads, T, head] at `positions` [B, T] over the blocks at table
    columns `block_ids` [B, J] (columns past `last_block` [B] are padding) of `kv_blocks`
    [num_blocks, kv_heads, 2 * block_size, head] (keys, then values) -> [B, q_heads, T, head].

    Plain matmuls in the cache's dtype (scores and softmax in fp32) rather than torch's SDPA: with a
    mask and one query per sequence its CPU kernel took ~5x longer here, and converting the gathered
    KV to fp32 ~9x (measured with 8 sequences, a 1-block sink and a 768-token window)."""
    block_size = kv_blocks.shape[2] // 2
    present = block_ids <= last_block[:, None]
    gathered = kv_blocks[table.gather(1, torch.where(present, block_ids, 0))]  # [B, J, kv_heads, 2 * block, head]
    batch, columns, kv_heads = gathered.shape[:3]
    gathered = gathered.transpose(1, 2)  # [B, kv_heads, J, 2 * block, head]
    keys = gathered[:, :, :, :block_size].reshape(batch, kv_heads, columns * block_size, -1)
    values = gathered[:, :, :, block_size:].reshape(batch, kv_heads, columns * block_size, -1)
    k_pos = (block_ids[:, :, None] * block_size + torch.arange(block_size)).reshape(batch, 1, -1)
    k_present = present[:, :, None].expand(-1, -1, block_size).reshape(batch, 1, -1)
    q_pos = positions[:, :, None]
    mask = k_present & (k_pos <= q_pos) & ((k_pos < sink) | (q_pos - k_pos < window))  # [B, T, K]
    _, q_heads, tokens, head = query.shape
    group = q_heads // kv_heads  # query heads per KV head (GQA)
    q = query.to(keys.dtype).reshape(batch, kv_heads, group * tokens, head)
    scores = torch.matmul(q, keys.transpose(-1, -2)).float().mul_(scale)  # [B, kv_heads, group * T, K]
    scores = scores.view(batch, kv_heads, group, tokens, -1).masked_fill_(~mask[:, None, None], float("-inf"))
    probs = torch.softmax(scores.view(batch, kv_heads, group * tokens, -1), dim=-1).to(values.dtype)
    return torch.matmul(probs, values).view(batch, q_heads, tokens, head)


def sink_window_attention(query: torch.Tensor, kv_cache: torch.Tensor, block_table: torch.Tensor,
                          query_start_loc: torch.Tensor, seq_lens: torch.Tensor, sink: int, window: int,
                          scale: float, output: torch.Tensor) -> None:
    """Write into `output` [tokens, q_heads, head] the sink + window attention of `query` [tokens,
    q_heads, head] over vLLM's CPU cache tensor `kv_cache` [num_blocks, kv_heads, block_size,
    2 * head] for a batch of sequences (vLLM's layout: sequence i has the query tokens
    query_start_loc[i]:query_start_loc[i+1], the last of its seq_lens[i] positions). Decodes (one
    query) run as one batched call; each prefill chunk runs alone."""
    blocks, kv_heads, block_size, _ = kv_cache.shape
    kv_blocks = kv_cache.view(blocks, kv_heads, 2 * block_size, -1)  # per block and head: keys, then values
    sink_blocks = -(-sink // block_size)
    starts = query_start_loc.tolist()
    lens = seq_lens.tolist()
    decodes = [i for i in range(len(lens)) if starts[i + 1] - starts[i] == 1]
    groups: list[list[int]] = [decodes] if decodes else []
    groups += [[i] for i in range(len(lens)) if starts[i + 1] - starts[i] > 1]
    for group in groups:
        idx = torch.tensor(group)
        q_len = starts[group[0] + 1] - starts[group[0]]
        seq = seq_lens[idx].long()
        positions = seq[:, None] - q_len + torch.arange(q_len)  # [B, T]
        last_block = (seq - 1) // block_size
        # The window of the first query starts at block (p0 - W + 1) // block; blocks before it
        # other than the sink blocks are not read (they may be freed).
        first_window = torch.clamp((positions[:, 0] - window + 1).clamp_min(0) // block_size, min=sink_blocks)
        span = int((last_block - first_window).max().clamp_min(-1)) + 1
        columns = torch.cat([torch.arange(sink_blocks).expand(len(group), -1),
                             first_window[:, None] + torch.arange(span)], dim=1)
        rows = torch.cat([torch.arange(starts[i], starts[i + 1]) for i in group])
        q = query[rows].view(len(group), q_len, *query.shape[1:]).transpose(1, 2)
        out = _attend(q, positions, block_table[idx].long(), columns, last_block, kv_blocks, sink, window, scale)
        output[rows] = out.transpose(1, 2).reshape(len(rows), *output.shape[1:]).to(output.dtype)


class SinkWindowCPUImpl(CPUAttentionBackendImpl):
    """vLLM's CPU attention for a layer that keeps `sink_tokens` sinks and a window of
    `sliding_window` tokens (set by the Attention patch after construction)."""

    sink_tokens: int

    def forward(self, layer, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
                attn_metadata: CPUAttentionMetadata | None, output: torch.Tensor,
                output_scale: torch.Tensor | None = None, output_block_scale: torch.Tensor | None = None) -> torch.Tensor:
        if output_scale is not None or output_block_scale is not None:
            raise NotImplementedError("fused output quantization is not supported by sink + window attention")
        if attn_metadata is None:  # warm-up
            return output
        n = attn_metadata.num_actual_tokens
        sink_window_attention(query[:n], kv_cache, attn_metadata.block_table,
                              attn_metadata.query_start_loc, attn_metadata.seq_lens, self.sink_tokens,
                              self.sliding_window, self.scale, output[:n].view(n, self.num_heads, self.head_size))
        return output

    def do_kv_cache_update(self, layer: torch.nn.Module, key: torch.Tensor, value: torch.Tensor,
                           kv_cache: torch.Tensor, slot_mapping: torch.Tensor) -> None:
        write_kv(key, value, *split_cache(kv_cache), slot_mapping)


class SinkWindowCPUBackend(CPUAttentionBackend):
    """vLLM's CPU attention backend with the sink + window implementation (same metadata builder)."""

    @staticmethod
    def get_impl_cls() -> type[SinkWindowCPUImpl]:
        return SinkWindowCPUImpl
