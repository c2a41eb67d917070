"""Profile files are validated against the served model before anything runs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch

from vllm_adaptive import profiles
from vllm_adaptive.kv import KV
from vllm_adaptive.runtime import StepPlan

MODEL = profiles.ModelSpec("LlamaForCausalLM", 30, 576)
DOC = profiles.ProfileSet.of(MODEL, [profiles.Profile("fast", frozenset({14, 15})),
                                     profiles.Profile("fastest", frozenset({8, 11, 14}))], default="fast").to_document()


def parse(doc, layers=30, hidden=576):
    return profiles.ProfileSet.parse(doc, "p.json", profiles.ModelSpec("LlamaForCausalLM", layers, hidden))


def test_valid_document_and_implicit_full():
    table = parse(DOC)
    assert table.get(None).skip == {14, 15} and table.get("full").skip == frozenset()


@pytest.mark.parametrize("change, message", [
    ({"profiles": {"x": {"skip": [3, 30]}}}, "layers [30] out of range 0..29"),
    ({"profiles": {"x": {"skip": [-1]}}}, "out of range"),
    ({"profiles": {"x": {"skip": "3"}}}, "must be a list of layer indices"),
    ({"default": "nope"}, "default profile 'nope'"),
    ({"format": "v0"}, "'format' must be"),
    ({"profiles": {"bad name": {"skip": []}}}, "may only use"),
    ({"profiles": {"x": {"skip": list(range(30))}}}, "skips every layer"),
])
def test_bad_documents_say_why(change, message):
    with pytest.raises(profiles.ProfileError, match=re.escape(message)):
        parse({**DOC, "default": "full", **change})


def test_profile_for_another_model_is_refused():
    with pytest.raises(profiles.ProfileError, match="different model: model.num_layers is 30 but the served model has 2"):
        parse(DOC, layers=2)


def test_load_reports_bad_json(tmp_path):
    path = tmp_path / "p.json"
    path.write_text("{oops")
    with pytest.raises(profiles.ProfileError, match="not valid JSON"):
        profiles.ProfileSet.load(path, MODEL)
    path.write_text(json.dumps(DOC))
    assert profiles.ProfileSet.load(path, MODEL).default == "fast"


def test_written_file_reads_back_identical(tmp_path):
    """The writer's output is the reader's input: every field and the calibration records survive."""
    table = profiles.ProfileSet.of(
        profiles.ModelSpec("LlamaForCausalLM", 30, 576, "SmolLM2"),
        [profiles.Profile("fast", frozenset({3}), "calibrated", {"ppl": 9.5, "top1_agreement": 0.8}),
         profiles.Profile("lean", frozenset({3}), "kv-uniform", kv=(KV.FULL,) * 3 + (KV.NONE,) + (256,) * 26,
                          kv_fraction=0.31)],
        sections={"calibration": {"refused": ["x"]}, "layer_metrics": {"delta_ppl": [1.0] * 30}})
    back = profiles.ProfileSet.load(table.dump(tmp_path / "sub" / "p.json"), MODEL)
    assert back == table
    assert back.get("lean").kv_budgets(30)[:5] == (KV.FULL, KV.FULL, KV.FULL, KV.NONE, 256)
    assert json.loads((tmp_path / "sub" / "p.json").read_text())["profiles"]["lean"]["kv"][:4] == [
        "full", "full", "full", "none"]


def test_without_a_served_model_the_file_is_read_against_its_own_model_block():
    assert parse_own(DOC).model == MODEL
    with pytest.raises(profiles.ProfileError, match="'model' must name architecture, num_layers, hidden_size"):
        parse_own({**DOC, "model": {"architecture": "LlamaForCausalLM"}})


def parse_own(doc):
    return profiles.ProfileSet.parse(doc, "p.json")


def test_runtime_plans_uniform_and_mixed_batches():
    rt = StepPlan(parse(DOC))
    rt.plan_batch([{"adaptive_profile": "fastest"}, {"adaptive_profile": "fastest"}], np.array([3, 1]))
    assert rt.action(8, 4, torch.device("cpu")) is True and rt.action(15, 4, torch.device("cpu")) is False
    rt.plan_batch([None, {"adaptive_profile": "fastest"}, {"adaptive_profile": "unknown"}], np.array([2, 1, 1]))
    # default 'fast' skips 14, 15; 'fastest' skips 8, 11, 14; unknown names fall back to the default
    assert rt.action(14, 4, torch.device("cpu")) is True
    assert rt.action(8, 5, torch.device("cpu")).tolist() == [False, False, True, False, False]
    assert rt.action(15, 4, torch.device("cpu")).tolist() == [True, True, False, True]
    assert rt.action(0, 4, torch.device("cpu")) is False


def test_serve_limits_the_profiles_and_refuses_unknown_names():
    from vllm_adaptive import config

    options = config.from_vllm_config({"adaptive": {"profiles": "p.json", "serve": "fastest, full"}})
    assert options.serve == ("fastest", "full")
    assert set(parse(DOC).only(options.serve).profiles) == {"fast", "fastest", "full"}  # the default is kept
    assert set(parse(DOC).only(["fastest"]).profiles) == {"fast", "fastest"}
    with pytest.raises(profiles.ProfileError, match=r"profiles \['nope'\] to serve are not in p.json"):
        parse(DOC).only(["fastest", "nope"], "p.json")
    with pytest.raises(ValueError, match="adaptive.serve must be a list of profile names"):
        config.from_vllm_config({"adaptive": {"serve": {"fast": 1}}})
