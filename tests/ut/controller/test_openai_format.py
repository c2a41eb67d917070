"""Stream reassembly (what gets cached from a streamed miss) and hit replay (what clients get)."""

from __future__ import annotations

import json

from controller.openai_format import StreamAssembler, fresh_copy, replay_stream, sse


def chunks(pieces, finish="stop", done=True):
    events = [{"id": "c1", "created": 1, "model": "m", "object": "chat.completion.chunk",
               "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]}]
    events += [{"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]} for p in pieces]
    if finish:
        events.append({"id": "c1", "created": 1, "model": "m", "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
    raw = b"".join(sse(e) for e in events) + (sse("[DONE]") if done else b"")
    return raw


def feed_split(assembler, raw, size=7):
    for i in range(0, len(raw), size):  # arbitrary network chunking, splitting events mid-way
        assembler.feed(raw[i : i + size])


def test_complete_stream_reassembles_to_a_completion():
    a = StreamAssembler("chat")
    feed_split(a, chunks(["The capital", " is Paris."]))
    assert a.complete
    body = a.response()
    assert body["object"] == "chat.completion"
    assert body["choices"][0]["message"] == {"role": "assistant", "content": "The capital is Paris."}
    assert body["choices"][0]["finish_reason"] == "stop"


def test_cut_streams_are_not_complete():
    for raw in (chunks(["a"], done=False), chunks(["a"], finish=None)):
        a = StreamAssembler("chat")
        feed_split(a, raw)
        assert not a.complete


def test_replay_roundtrip_chat_and_completions():
    a = StreamAssembler("chat")
    feed_split(a, chunks(["Hello", " world"]))
    cached = fresh_copy(a.response())
    assert cached["id"].startswith("cache-")
    b = StreamAssembler("chat")
    feed_split(b, b"".join(replay_stream("chat", cached)))
    assert b.complete and b.response()["choices"] == cached["choices"]

    completion = {"id": "x", "created": 1, "model": "m", "object": "text_completion",
                  "choices": [{"index": 0, "text": " Paris", "logprobs": None, "finish_reason": "length"}]}
    events = b"".join(replay_stream("completions", completion)).decode().split("\n\n")
    assert events[-2] == "data: [DONE]"
    assert json.loads(events[0][6:])["choices"][0]["text"] == " Paris"
    c = StreamAssembler("completions")
    feed_split(c, b"".join(replay_stream("completions", completion)))
    assert c.complete and c.response()["choices"] == completion["choices"]
