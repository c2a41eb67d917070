"""An engine whose default profile skips layers runs compiled (no --enforce-eager) on SmolLM2:
the skipped layers are not built, and greedy output equals eager with the same profile."""

from __future__ import annotations

import json

import pytest

from tests.e2e.engine import result, run_engine

pytestmark = pytest.mark.engine

SKIP = [14, 15]


def test_default_skip_profile_compiles_and_matches_eager(smollm2_dir, tmp_path):
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
              "named": texts(llm.generate(PROMPTS, sp("fastest"))), "stack": status["stacks"][0],
              "built": built, "params": params, "mode": int(llm.llm_engine.vllm_config.compilation_config.mode)}}))
    """
    compiled = result(run_engine(smollm2_dir, body.format(model=str(smollm2_dir), eager=False, path=str(path))))
    eager = result(run_engine(smollm2_dir, body.format(model=str(smollm2_dir), eager=True, path=str(path))))
    assert compiled["mode"] != 0 and eager["mode"] == 0  # CompilationMode.NONE is eager
    assert compiled["texts"] == eager["texts"]  # token for token, greedy
    stack = compiled["stack"]
    assert stack["compiled"] and stack["missing_layers"] == SKIP and not stack["per_request"]
    assert list(stack["profiles"]["profiles"]) == ["fast"]  # compiled: the default profile only ...
    assert compiled["named"] == compiled["texts"]  # ... a request naming another one gets it
    # `full` runs layers 14 and 15, which the default keeps no KV (nor weights) for: not served
    assert eager["stack"]["per_request"] and set(eager["stack"]["profiles"]["profiles"]) == {"fast", "fastest"}
    assert eager["named"] != eager["texts"]  # eager serves per-request profiles
    for run in (compiled, eager):  # skipped layers are built as missing: no weights (and no KV)
        assert [i for i, name in enumerate(run["built"]) if name == "SkippedLayer"] == SKIP
        assert [i for i, n in enumerate(run["params"]) if n == 0] == SKIP
