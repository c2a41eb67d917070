"""The fresh-chunk call in front of compiled decoders (vllm_adaptive.models.views): it must pass
arguments through unchanged and its frame must be sized as the module documents: too big for a
16 KiB chunk's free part, small enough that CPython's 64 KiB chunk keeps room for the graph."""

from __future__ import annotations

import sys

import pytest

from vllm_adaptive.models import views


def test_passes_arguments_and_result_and_exceptions_through():
    assert views.call_in_fresh_chunk(lambda a, b=0, *, c: (a, b, c), (1, 2), {"c": 3}) == (1, 2, 3)

    def boom():
        raise KeyError("x")

    with pytest.raises(KeyError):
        views.call_in_fresh_chunk(boom, (), {})


def test_frame_starts_its_own_64_kib_chunk_with_room_left():
    code = views.call_in_fresh_chunk.__code__
    frame_bytes = (code.co_nlocals + code.co_stacksize) * 8
    assert 32 * 1024 < frame_bytes < 40 * 1024  # > any 16 KiB chunk's free part; 64 KiB chunk, ≥ 24 KiB left


def test_deep_calls_under_it_work():
    """Recursion below the caller crosses chunk boundaries without harm."""
    def depth(n):
        return 0 if n == 0 else 1 + depth(n - 1)

    n = min(500, sys.getrecursionlimit() // 4)
    assert views.call_in_fresh_chunk(depth, (n,), {}) == n
