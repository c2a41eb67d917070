"""A compiled engine (no --enforce-eager) serves skip profiles per request on SmolLM2: the default
profile's skipped layers are not built, every other profile runs its own compiled view, a step
mixing profiles runs masked, and greedy output equals the eager engine's for each."""

from __future__ import annotations

import json

import pytest

from tests.e2e.engine import result, run_engine

pytestmark = pytest.mark.engine

SKIP = [14, 15]


def test_compiled_engine_serves_profiles_per_request_as_eager_does(smollm2_dir, tmp_path):
    path = tmp_path / "profiles.json"
    path.write_text(json.dumps({
        "format": "vllm-adaptive/profiles-v1",
        "model": {"architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576},
        "default": "fast", "profiles": {"fast": {"skip": SKIP}, "fastest": {"skip": SKIP + [8, 11]}},
    }))
    body = """
        llm = LLM({model!r}, enforce_eager={eager}, dtype="float32", max_model_len=512, max_num_seqs=8,
                  additional_config={{"adaptive": {{"profiles": {path!r}}}}})
        status = llm.collective_rpc("adaptive_status")[0]
        layers = lambda self: self.get_model().model.layers
        built = llm.collective_rpc(lambda self: [type(l).__name__ for l in layers(self)])[0]
        params = llm.collective_rpc(lambda self: [sum(p.numel() for p in l.parameters()) for l in layers(self)])[0]
        print("RESULT", json.dumps({{"texts": texts(llm.generate(PROMPTS, sp(None))),
              "named": texts(llm.generate(PROMPTS, sp("fastest"))),
              "mixed": texts(llm.generate(PROMPTS, [sp("fastest"), sp(None), sp("fastest")])), "stack": status["stacks"][0],
              "built": built, "params": params, "mode": int(llm.llm_engine.vllm_config.compilation_config.mode)}}))
    """
    compiled = result(run_engine(smollm2_dir, body.format(model=str(smollm2_dir), eager=False, path=str(path))))
    eager = result(run_engine(smollm2_dir, body.format(model=str(smollm2_dir), eager=True, path=str(path))))
    assert compiled["mode"] != 0 and eager["mode"] == 0  # CompilationMode.NONE is eager
    for key in ("texts", "named", "mixed"):  # token for token, greedy: default, another profile, mixed steps
        assert compiled[key] == eager[key], key
    assert eager["named"] != eager["texts"]  # the profiles differ, so equal outputs say each ran its own layers
    assert compiled["mixed"] == [eager["named"][0], eager["texts"][1], eager["named"][2]]  # as if served alone
    stack = compiled["stack"]
    assert stack["compiled"] and stack["missing_layers"] == SKIP and stack["per_request"]
    assert list(stack["views"]) == ["fastest"] and stack["views"]["fastest"] > 0  # compiled at start-up
    # `full` runs layers 14 and 15, which the default keeps no KV (nor weights) for: not served
    for run in (compiled, eager):
        assert set(run["stack"]["profiles"]["profiles"]) == {"fast", "fastest"}
    assert eager["stack"]["per_request"] and eager["stack"]["views"] == {}
    for run in (compiled, eager):  # skipped layers are built as missing: no weights (and no KV)
        assert [i for i, name in enumerate(run["built"]) if name == "SkippedLayer"] == SKIP
        assert [i for i, n in enumerate(run["params"]) if n == 0] == SKIP
