"""Skip profiles and KV budgets on every common decoder architecture (tiny random-weight models
built by transformers from a config), served by a compiled engine per request: vLLM with each
profile generates what transformers generates with those layers removed, each layer's KV spec
is what vllm_adaptive.kv predicts, and architectures the plugin cannot handle are refused at
start-up with the reason."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.e2e.engine import result, run_engine
from vllm_adaptive.kv import KV, plan

pytestmark = pytest.mark.engine

SKIP = [1]  # the default profile 'lean' (its layer is not built)
LEANER = [1, 2]  # a second profile, served per request by its own compiled view
BUDGET = {"2": 32}  # a window of 32 tokens on layer 2
LAYERS = 4
SMALL = dict(vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=LAYERS,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
             bos_token_id=1, eos_token_id=2, pad_token_id=2, initializer_range=0.2)


def _configs():
    from transformers import (Gemma3TextConfig, LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config)

    return {
        "LlamaForCausalLM": (LlamaConfig(**SMALL, tie_word_embeddings=True), {}),
        "MistralForCausalLM": (MistralConfig(**SMALL, head_dim=32, sliding_window=None), {}),
        "Qwen2ForCausalLM": (Qwen2Config(**SMALL, tie_word_embeddings=True), {}),
        "Qwen3ForCausalLM": (Qwen3Config(**SMALL, head_dim=32, tie_word_embeddings=True), {}),
        # Gemma3: local layers slide over 64 tokens natively; layer 2's budget (32) is the smaller
        # (untied: with Gemma's sqrt(hidden) embedding scale, tied random weights repeat the last token)
        "Gemma3ForCausalLM": (Gemma3TextConfig(**SMALL, head_dim=32, tie_word_embeddings=False, sliding_window=64, layer_types=[
            "sliding_attention", "sliding_attention", "sliding_attention", "full_attention"]),
            {0: 64, 1: 64, 2: 64}),
    }


def tiny_model(folder, architecture: str, config, tokenizer_dir):
    """A random-weight fp32 model folder of `architecture`, with SmolLM2's tokenizer."""
    import torch
    import transformers

    torch.manual_seed(0)
    getattr(transformers, architecture)(config).to(torch.float32).save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, folder / name)
    return folder


def hf_greedy(folder, architecture: str, prompt: list[int], skip: list[int], tokens: int) -> list[int]:
    """Greedy continuation by transformers with the layers `skip` removed."""
    import torch
    import transformers

    model = getattr(transformers, architecture).from_pretrained(folder, torch_dtype=torch.float32).eval()
    inner = model.model
    inner.layers = torch.nn.ModuleList(l for i, l in enumerate(inner.layers) if i not in skip)
    if getattr(model.config, "layer_types", None):  # Gemma3 picks mask and RoPE by loop position
        model.config.layer_types = [t for i, t in enumerate(model.config.layer_types) if i not in skip]
    ids = torch.tensor([prompt])
    with torch.no_grad():
        for _ in range(tokens):
            nxt = model(ids, use_cache=False).logits[0, -1].argmax()
            ids = torch.cat([ids, nxt.view(1, 1)], dim=1)
    return ids[0, len(prompt):].tolist()


PROMPT = [1, 504, 3458, 282, 4649, 314, 253, 1345, 30, 378, 2114]
TOKENS = 8


# Every architecture after vLLM's warm-up (the views compile then), and one without it
# (VLLM_CPU_CI_ENV skips it: the views are installed at the first step and compile at first use).
CASES = [pytest.param(a, True, id=a) for a in _configs()] + [pytest.param("LlamaForCausalLM", False, id="no-warm-up")]


@pytest.mark.parametrize("architecture,warm_up", CASES)
def test_skip_profile_equals_transformers_without_those_layers(architecture, warm_up, smollm2_dir, tmp_path):
    config, native = _configs()[architecture]
    folder = tiny_model(tmp_path / "model", architecture, config, smollm2_dir)
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({
        "format": "vllm-adaptive/profiles-v1",
        "model": {"architecture": architecture, "num_layers": LAYERS, "hidden_size": 128},
        "default": "lean", "profiles": {"lean": {"skip": SKIP, "kv": BUDGET}, "leaner": {"skip": LEANER}}}))
    out = result(run_engine(folder, f"""
        os.environ["VLLM_CPU_CI_ENV"] = "{0 if warm_up else 1}"
        llm = LLM({str(folder)!r}, dtype="float32", max_model_len=256, max_num_seqs=4,
                  additional_config={{"adaptive": {{"profiles": {str(profiles)!r}}}}})
        run = lambda extra: llm.generate([{{"prompt_token_ids": {PROMPT!r}}}], SamplingParams(
            max_tokens={TOKENS}, temperature=0, extra_args=extra))[0].outputs[0].token_ids
        ids, leaner = run(None), run({{"adaptive_profile": "leaner"}})
        cfg = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
        groups = [[getattr(g.kv_cache_spec, "sliding_window", None), sorted(next(int(x) for x in n.split(".") if x.isdigit()) for n in g.layer_names)]
                  for g in cfg.kv_cache_groups]
        print("RESULT", json.dumps({{"ids": list(ids), "leaner": list(leaner), "groups": groups,
                                    "stack": llm.collective_rpc("adaptive_status")[0]["stacks"][0]}}))
    """))
    # the KV budget changes nothing while the context (19 tokens) fits every window
    assert out["ids"] == hf_greedy(folder, architecture, PROMPT, SKIP, TOKENS)
    assert out["ids"] != hf_greedy(folder, architecture, PROMPT, [], TOKENS)  # skipping changes the output
    leaner = hf_greedy(folder, architecture, PROMPT, LEANER, TOKENS)
    assert out["leaner"] == leaner != out["ids"]  # per request, by its own compiled view
    assert out["stack"]["compiled"] and list(out["stack"]["views"]) == ["leaner"]
    assert (out["stack"]["views"]["leaner"] is not None) == warm_up  # compile seconds: at warm-up only
    effective = [KV.NONE if i in SKIP else min(32, native.get(i, 32)) if str(i) in BUDGET
                 else native.get(i, KV.FULL) for i in range(LAYERS)]
    predicted = [[None if g.window is KV.FULL else g.window, sorted(g.layers)] for g in plan(effective).groups]
    assert sorted(out["groups"], key=str) == sorted(predicted, key=str)
    assert out["stack"]["missing_layers"] == SKIP and out["stack"]["architecture"] == architecture


def test_unsupported_architectures_are_refused_at_start_up(smollm2_dir, tmp_path):
    from transformers import GPT2Config

    folder = tiny_model(tmp_path / "gpt2", "GPT2LMHeadModel", GPT2Config(
        vocab_size=49152, n_embd=128, n_layer=2, n_head=4, n_positions=512, bos_token_id=1, eos_token_id=2),
        smollm2_dir)
    profiles = tmp_path / "profiles.json"
    profiles.write_text(json.dumps({
        "format": "vllm-adaptive/profiles-v1",
        "model": {"architecture": "GPT2LMHeadModel", "num_layers": 2, "hidden_size": 128},
        "default": "full", "profiles": {"fast": {"skip": [1]}}}))
    proc = run_engine(folder, f"""
        llm = LLM({str(folder)!r}, enforce_eager=True, max_model_len=256,
                  additional_config={{"adaptive": {{"profiles": {str(profiles)!r}}}}})
        print("RESULT", 1)
    """)
    assert proc.returncode != 0
    assert "GPT2LMHeadModel cannot be served with skip profiles" in proc.stderr, proc.stderr[-3000:]
    assert "returns one tensor" in proc.stderr
