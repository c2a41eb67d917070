"""KV budgets in the profile file: parsing, refusals with reasons, the engine's layout."""

from __future__ import annotations

import pytest

from vllm_adaptive.kv import KV, SinkWindow
from vllm_adaptive.profiles import FORMAT, ModelSpec, ProfileError, ProfileSet, parse_kv

MODEL = ModelSpec("LlamaForCausalLM", 4, 8)


def doc(profiles, default="full"):
    """A hand-written document (the reader's input, valid or not)."""
    return {"format": FORMAT, "model": MODEL.to_json(), "default": default, "profiles": profiles}


def load(d):
    return ProfileSet.parse(d, "p.json", MODEL)


def test_list_and_object_forms():
    assert parse_kv(["full", 256, "none", 512], 4, frozenset({2}), "kv") == (KV.FULL, 256, KV.NONE, 512)
    assert parse_kv({"1": 256}, 4, frozenset({3}), "kv") == (KV.FULL, 256, KV.FULL, KV.NONE)  # skipped -> none
    sinks = parse_kv({"2": {"sink": 4, "window": 256}}, 4, frozenset(), "kv")
    assert sinks == (KV.FULL, KV.FULL, SinkWindow(4, 256), KV.FULL)


def test_sink_budgets_round_trip_through_the_file(tmp_path):
    table = load(doc({"sinks": {"skip": [], "kv": {"1": {"sink": 4, "window": 128}, "2": 512}}}, default="sinks"))
    again = ProfileSet.load(table.dump(tmp_path / "p.json"), MODEL)
    assert again.kv_layout == table.kv_layout == (KV.FULL, SinkWindow(4, 128), 512, KV.FULL)


@pytest.mark.parametrize("raw, skip, message", [
    ({"4": 256}, set(), "names layer '4', which does not exist"),
    (["full"] * 3, set(), "lists 3 budgets; the model has 4 layers"),
    ({"1": 0}, set(), "use \"full\", \"none\", a number of tokens >= 1 or {\"sink\": S, \"window\": W}"),
    ({"1": True}, set(), "use \"full\", \"none\", a number of tokens >= 1"),
    ({"1": {"sink": 0, "window": 64}}, set(), "(both >= 1)"),
    ({"1": {"sink": 4}}, set(), "(both >= 1)"),
    ({"1": {"sink": 4, "window": 64, "x": 1}}, set(), "is {'sink': 4, 'window': 64, 'x': 1}"),
    ({"1": "none"}, set(), "only skipped layers may have no KV"),
    ({"1": 256}, {1}, "the profile skips layer 1"),
    ("full", set(), "must be a list of per-layer budgets or an object"),
])
def test_bad_budgets_name_the_problem(raw, skip, message):
    with pytest.raises(ProfileError, match="p.json: profiles.x.kv") as err:
        load(doc({"x": {"skip": sorted(skip), "kv": raw}}))
    assert message in str(err.value)


def test_default_profile_sets_the_layout_and_drops_profiles_it_cannot_serve():
    table = load(doc({"lean": {"skip": [1], "kv": {"3": 256}}, "leaner": {"skip": [1, 2]}, "fast": {"skip": [2]}},
                     default="lean"))
    served, dropped = table.with_default("lean")
    assert served.kv_layout == (KV.FULL, KV.NONE, KV.FULL, 256)
    assert dropped == ["fast", "full"] and sorted(served.profiles) == ["lean", "leaner"]
    # with `full` as default every layer has KV and every profile is served
    served, dropped = table.with_default("full")
    assert served.kv_layout == (KV.FULL,) * 4 and dropped == []
    with pytest.raises(ProfileError, match="default profile 'nope'"):
        table.with_default("nope")
