"""Sink + window attention over paged KV against a dense reference with the exact mask
`k <= q and (k < S or q - k < W)`: decodes, prefill chunks longer than W, mixed batches,
sequences shorter than S + W, and freed gap blocks that must never be read."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F

from vllm_adaptive.attention.sink_window import sink_window_attention, split_cache, write_kv

HEADS, KV_HEADS, HEAD, BLOCK, BLOCKS = 6, 2, 64, 32, 96
SCALE = HEAD ** -0.5
# (sequence length, query tokens this step): decodes, a chunk of 70 > W, short ones, a first chunk
BATCH = [(100, 1), (170, 70), (5, 1), (130, 45), (33, 1), (40, 40)]


def reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, sink: int,
              window: int) -> torch.Tensor:
    keys = torch.arange(k.shape[0])[None]
    mask = (keys <= positions[:, None]) & ((keys < sink) | (positions[:, None] - keys < window))
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask[None, None], scale=SCALE, enable_gqa=True)
    return out[0].transpose(0, 1)


@pytest.mark.parametrize("sink,window", [(4, 40), (40, 33), (1, 1), (4, 200), (64, 64), (100, 8)])
def test_matches_the_dense_mask_and_never_reads_freed_blocks(sink, window):
    torch.manual_seed(0)
    rng = random.Random(0)
    cache = torch.zeros(BLOCKS, KV_HEADS, BLOCK, 2 * HEAD)
    key_cache, value_cache = split_cache(cache)
    free = list(range(1, BLOCKS))  # block 0 is vLLM's null block
    rng.shuffle(free)
    sink_blocks = -(-sink // BLOCK)
    tables, keys, values = [], [], []
    for length, q_len in BATCH:
        blocks = [free.pop() for _ in range(-(-length // BLOCK))]
        k, v = torch.randn(length, KV_HEADS, HEAD), torch.randn(length, KV_HEADS, HEAD)
        write_kv(k, v, key_cache, value_cache, torch.tensor([blocks[p // BLOCK] * BLOCK + p % BLOCK for p in range(length)]))
        # what SinkWindowManager frees before this step: blocks between the sinks and the window
        # of the step's first query; poison them and point the table at the null block
        for j in range(sink_blocks, max(0, length - q_len - window + 1) // BLOCK):
            key_cache[blocks[j]] = 1e4
            value_cache[blocks[j]] = 1e4
            blocks[j] = 0
        tables.append(blocks + [0] * (8 - len(blocks)))
        keys.append(k)
        values.append(v)
    queries = [torch.randn(q_len, HEADS, HEAD) for _, q_len in BATCH]
    starts = torch.tensor([0] + [sum(q for _, q in BATCH[: i + 1]) for i in range(len(BATCH))])
    out = torch.full((int(starts[-1]), HEADS, HEAD), float("nan"))
    sink_window_attention(torch.cat(queries), cache, torch.tensor(tables), starts,
                          torch.tensor([length for length, _ in BATCH]), sink, window, SCALE, out)
    expected = torch.cat([reference(q, k, v, torch.arange(length - q_len, length), sink, window)
                          for q, k, v, (length, q_len) in zip(queries, keys, values, BATCH)])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)  # fp32 cache: the math is exact


def test_padding_slots_are_not_written():
    cache = torch.zeros(4, KV_HEADS, BLOCK, 2 * HEAD)
    key_cache, value_cache = split_cache(cache)
    k = torch.ones(3, KV_HEADS, HEAD)
    write_kv(k, 2 * k, key_cache, value_cache, torch.tensor([BLOCK + 1, -1, 2 * BLOCK]))
    assert key_cache[1, :, 1].eq(1).all() and value_cache[2, :, 0].eq(2).all()
    assert int(key_cache.ne(0).sum()) == 2 * KV_HEADS * HEAD  # two tokens written, the padded one not
