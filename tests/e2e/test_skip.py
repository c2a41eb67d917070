"""Layer skipping inside a real vLLM engine on SmolLM2 (real weights), eager mode."""

from __future__ import annotations

import json

import pytest

from tests.e2e.engine import result, run_engine
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

pytestmark = pytest.mark.engine

@pytest.fixture(scope="module")
def profile_file(smollm2_dir, tmp_path_factory):
    table = ProfileSet.of(ModelSpec.from_folder(smollm2_dir), [
        Profile("fast", frozenset({14, 15})), Profile("fastest", frozenset({8, 11, 14, 17, 20, 23}))])
    return table.dump(tmp_path_factory.mktemp("profiles") / "profiles.json")


def test_profiles_skip_layers_and_mixed_batches_match_solo(smollm2_dir, profile_file):
    stock = result(run_engine(smollm2_dir, f"""
        llm = LLM({str(smollm2_dir)!r}, enforce_eager=True, max_model_len=512)
        print("RESULT", json.dumps(texts(llm.generate(PROMPTS, sp(None)))))
    """, plugins=""))
    out = result(run_engine(smollm2_dir, f"""
        llm = LLM({str(smollm2_dir)!r}, enforce_eager=True, max_model_len=512,
                  additional_config={{"adaptive": {{"profiles": {str(profile_file)!r}}}}})
        calls = lambda: llm.collective_rpc("adaptive_status")[0]["layer_calls"]
        res = {{}}
        for name in ("full", "fastest"):
            before = calls()
            res[name] = texts(llm.generate(PROMPTS, sp(name)))
            res[name + "_calls"] = [b - a for a, b in zip(before, calls())]
        res["default"] = texts(llm.generate(PROMPTS, sp(None)))
        mixed = llm.generate(PROMPTS + PROMPTS, [sp("full")] * 3 + [sp("fastest")] * 3)
        res["mixed"] = texts(mixed)
        res["steps"] = llm.collective_rpc("adaptive_status")[0]["steps"]
        print("RESULT", json.dumps(res))
    """))
    assert out["full"] == stock  # 'full' reproduces stock vLLM token for token (greedy)
    assert out["default"] == stock
    skipped = [8, 11, 14, 17, 20, 23]
    assert all(out["fastest_calls"][i] == 0 for i in skipped)  # never executed
    assert all(out["fastest_calls"][i] > 0 for i in range(30) if i not in skipped)
    assert all(c > 0 for c in out["full_calls"])
    assert out["fastest"] != out["full"]  # the profile changes the output
    assert out["mixed"] == out["full"] + out["fastest"]  # one batch, each request its own profile
    assert out["steps"]["mixed"] > 0  # ... in steps that mix profiles (masked)


def test_grouping_scheduler_gives_each_step_one_profile(smollm2_dir, profile_file):
    out = result(run_engine(smollm2_dir, f"""
        llm = LLM({str(smollm2_dir)!r}, enforce_eager=True, max_model_len=512,
                  scheduler_cls="vllm_adaptive.core.sched.ProfileGroupingScheduler",
                  additional_config={{"adaptive": {{"profiles": {str(profile_file)!r}}}}})
        res = {{name: texts(llm.generate(PROMPTS, sp(name))) for name in ("full", "fastest")}}
        res["mixed"] = texts(llm.generate(PROMPTS + PROMPTS, [sp("full"), sp("fastest"), sp(None)] * 2))
        res["steps"] = llm.collective_rpc("adaptive_status")[0]["steps"]
        res["turns"] = dict(llm.llm_engine.engine_core.engine_core.scheduler.turns)
        print("RESULT", json.dumps(res))
    """))
    full, fastest = out["full"], out["fastest"]
    assert out["mixed"] == [full[0], fastest[1], full[2], full[0], fastest[1], full[2]]  # default 'full'
    assert out["steps"]["mixed"] == 0 and out["steps"]["uniform"] > 0  # the profiles took turns
    assert set(out["turns"]) == {"full", "fastest"}  # naming none or the default by name: one group


def test_bad_profiles_are_refused_at_start_up(smollm2_dir, tiny_llama_dir, profile_file, tmp_path):
    out_of_range = tmp_path / "range.json"
    doc = json.loads(profile_file.read_text())
    doc["profiles"]["fast"]["skip"] = [29, 30]
    out_of_range.write_text(json.dumps(doc))
    start = "llm = LLM({model!r}, enforce_eager={eager}, max_model_len=256, additional_config={{'adaptive': {{'profiles': {path!r}}}}})\nprint('RESULT', 1)"
    cases = [
        (smollm2_dir, out_of_range, True, "layers [30] out of range 0..29"),
        (tiny_llama_dir, profile_file, True, "different model: model.num_layers is 30 but the served model has 2"),
    ]
    for model, path, eager, message in cases:
        proc = run_engine(model, start.format(model=str(model), eager=eager, path=str(path)))
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
