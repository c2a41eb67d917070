"""Cache keys never cross tenant, model, system prompt, history or sampling parameters."""

from __future__ import annotations

from controller.keys import ANONYMOUS, cache_key


def chat(content="What is 2+2?", **extra):
    return {"model": "m", "temperature": 0, "messages": [{"role": "user", "content": content}], **extra}


def key(body, headers=None, endpoint="chat", window=2, header="authorization"):
    return cache_key(endpoint, body, headers or {}, header, window)


def test_same_request_same_partition_and_stream_flag_ignored():
    a = key(chat())
    b = key(chat(stream=True, user="u1"))
    assert a.partition == b.partition and a.query == "What is 2+2?"


def test_tenant_from_bearer_key_is_hashed_and_partitions():
    a = key(chat(), {"authorization": "Bearer sk-one"})
    b = key(chat(), {"authorization": "Bearer sk-two"})
    anon = key(chat())
    assert a.partition != b.partition != anon.partition
    assert "sk-one" not in a.tenant and anon.tenant == ANONYMOUS


def test_custom_tenant_header():
    a = key(chat(), {"x-team": "red", "authorization": "Bearer same"}, header="x-team")
    b = key(chat(), {"x-team": "blue", "authorization": "Bearer same"}, header="x-team")
    assert a.partition != b.partition


def test_model_system_prompt_and_sampling_params_partition():
    base = key(chat()).partition
    assert key(chat(model="other")).partition != base
    assert key(chat(max_tokens=5)).partition != base
    assert key(chat(top_p=0.5)).partition != base
    sys_body = chat()
    sys_body["messages"].insert(0, {"role": "system", "content": "Answer in French."})
    assert key(sys_body).partition != base


def test_history_window():
    def convo(first):
        return {"model": "m", "temperature": 0, "messages": [
            {"role": "user", "content": first}, {"role": "assistant", "content": "ok"},
            {"role": "user", "content": "and then?"}, {"role": "assistant", "content": "sure"},
            {"role": "user", "content": "What is 2+2?"}]}
    # The first turn is outside a window of 2 preceding turns, inside a window of 4.
    assert key(convo("A"), window=2).partition == key(convo("B"), window=2).partition
    assert key(convo("A"), window=4).partition != key(convo("B"), window=4).partition


def test_uncacheable_shapes():
    assert key({"model": "m", "messages": [{"role": "assistant", "content": "x"}]}) is None
    assert key({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}) is None
    assert key({"model": "m", "prompt": ["a", "b"]}, endpoint="completions") is None


def test_temperature_default_is_sampled():
    assert key({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).temperature == 1.0
    assert key(chat()).temperature == 0.0


def test_malformed_temperature_is_not_cached():
    assert key(chat(temperature="hot")) is None
