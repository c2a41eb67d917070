"""Per-layer KV budgets inside a real vLLM engine on SmolLM2: blocks, outputs, refusals."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.e2e.engine import result, run_engine
from vllm_adaptive.kv import KV, SinkWindow, plan
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

pytestmark = pytest.mark.engine

KV_BYTES = 64 << 20
TOKEN_BYTES = 2 * 3 * 64 * 2  # one token of one layer: (K, V) x 3 KV heads x head 64 x bf16


def budgets(windows: dict[int, int], skip=()) -> tuple:
    """Per-layer budgets of SmolLM2's 30 layers: `windows` as given, skipped layers none, others full."""
    return tuple(KV.NONE if i in skip else windows.get(i, KV.FULL) for i in range(30))


WINDOWS = budgets({i: 256 for i in range(10, 20)} | {i: 512 for i in range(20, 30)})
SINKS = budgets({i: SinkWindow(4, 256) for i in range(10, 20)} | {i: 512 for i in range(20, 30)})
PROFILES = {"tiers": Profile("tiers", kv=WINDOWS),
            "skip-window": Profile("skip-window", frozenset({5, 14}), kv=budgets({20: 1024, 21: 1024}, (5, 14))),
            "sinks": Profile("sinks", kv=SINKS)}


def profile_file(model, tmp_path, default: str, profiles: list[Profile]) -> str:
    table = ProfileSet.of(ModelSpec.from_folder(model), profiles, default=default)
    return str(table.dump(tmp_path / f"{default}.json"))


def engine(model, path, kv_bytes: int = KV_BYTES, **kw) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in ({"enable_prefix_caching": False} | kw).items())
    # VLLM_CPU_KVCACHE_SPACE (GiB, set for the other tests) would override kv_cache_memory_bytes
    return ("os.environ.pop('VLLM_CPU_KVCACHE_SPACE', None)\n"
            f"llm = LLM({str(model)!r}, enforce_eager=True, max_model_len=2048, {args}, "
            f"kv_cache_memory_bytes={kv_bytes}, additional_config={{'adaptive': {{'profiles': {path!r}}}}})")


BLOCKS = """
core = llm.llm_engine.engine_core.engine_core
cfg = core.scheduler.kv_cache_config
pool = core.scheduler.kv_cache_manager.block_pool
held = {}
llm.llm_engine.add_request("r", {"prompt_token_ids": list(range(1000, 1000 + PROMPT))}, SamplingParams(max_tokens=8, temperature=0))
for step in range(4):
    llm.llm_engine.step()
    held[step] = cfg.num_blocks - 1 - pool.get_num_free_blocks()  # one block is vLLM's null block
print("RESULT", json.dumps({"num_blocks": cfg.num_blocks, "held": held,
    "block_size": {g.kv_cache_spec.block_size for g in cfg.kv_cache_groups}.pop(),
    "groups": [[getattr(g.kv_cache_spec, "sliding_window", None), getattr(g.kv_cache_spec, "sink_tokens", None),
                sorted(int(n.split(".")[2]) for n in g.layer_names)] for g in cfg.kv_cache_groups]}))
"""


def vllm_spec(budget) -> list:
    """(sliding_window, sink_tokens) of the vLLM spec a budget becomes."""
    if isinstance(budget, SinkWindow):
        return [budget.window, budget.sink]
    return [None if budget is KV.FULL else budget, None]


@pytest.mark.parametrize("case", ["full", "tiers", "skip-window", "sinks"])
def test_budgets_change_vllm_blocks_as_predicted(smollm2_dir, tmp_path, case):
    profile = PROFILES.get(case, Profile(case))
    path = profile_file(smollm2_dir, tmp_path, case, list(PROFILES.values()))
    prompt = 1000
    out = result(run_engine(smollm2_dir, engine(smollm2_dir, path) + f"\nPROMPT = {prompt}\n" + BLOCKS))
    predicted = plan(profile.kv_budgets(30))
    assert sorted(map(str, out["groups"])) == sorted(
        str([*vllm_spec(g.window), sorted(g.layers)]) for g in predicted.groups)
    block = out["block_size"]
    page_bytes = block * TOKEN_BYTES
    assert out["num_blocks"] == predicted.pool_blocks(KV_BYTES, page_bytes)
    # step 0 prefills the prompt (all of it held), each later step decodes one token and first frees
    # the blocks that fell out of every window
    assert out["held"]["0"] == predicted.blocks_per_sequence(prompt, block, in_flight=prompt)
    for step in (1, 2, 3):
        assert out["held"][str(step)] == predicted.blocks_per_sequence(prompt + step, block)
    held_bytes = out["held"]["3"] * predicted.group_size * page_bytes
    full_bytes = -(-(prompt + 3) // block) * 30 * page_bytes
    if case == "full":
        assert held_bytes == full_bytes
    else:  # a sequence holds only its windows' blocks once decoding: fewer bytes, more sequences fit
        assert held_bytes < full_bytes


def test_outputs_equal_full_kv_while_context_fits_every_budget(smollm2_dir, tmp_path):
    stock = result(run_engine(smollm2_dir, """
        llm = LLM(%r, enforce_eager=True, max_model_len=2048)
        print("RESULT", json.dumps(texts(llm.generate(PROMPTS, sp(None)))))
    """ % str(smollm2_dir), plugins=""))
    path = profile_file(smollm2_dir, tmp_path, "tiers", [PROFILES["tiers"]])
    long_text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(200))  # ~1.4k tokens, past every window
    out = result(run_engine(smollm2_dir, engine(smollm2_dir, path) + """
res = {"short": texts(llm.generate(PROMPTS, sp(None)))}
lp = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
res["long_logprobs"] = [next(iter(d.values())).logprob for d in llm.generate([LONG], lp)[0].prompt_logprobs[1:]]
print("RESULT", json.dumps(res))
""".replace("LONG", repr(long_text))))
    full = result(run_engine(smollm2_dir, """
        llm = LLM(%r, enforce_eager=True, max_model_len=2048)
        lp = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
        print("RESULT", json.dumps([next(iter(d.values())).logprob for d in llm.generate([%r], lp)[0].prompt_logprobs[1:]]))
    """ % (str(smollm2_dir), long_text), plugins=""))
    assert out["short"] == stock  # 3 prompts + 16 tokens fit in every window: identical greedy text
    windowed, reference = out["long_logprobs"], full
    assert len(windowed) == len(reference) > 600
    # positions inside the smallest window (256) see exactly what full KV sees ...
    assert windowed[:200] == pytest.approx(reference[:200], abs=0.05)
    # ... past it, the windowed layers no longer see the start: the prediction changes
    assert sum(abs(a - b) for a, b in zip(windowed[600:], reference[600:])) > 1.0


def test_sink_window_layers_compute_the_streaming_llm_mask(smollm2_dir, tmp_path):
    """Layers 10-19 keep 4 sink tokens + a 128-token window. vLLM's logprobs match transformers
    run with the exact mask `k <= q and (k < 4 or q - k < 128)`, and differ from full KV and from a
    window without sinks: for the prompt (prefilled in chunks of 256 > W), and for decoding (one
    step batched with a short prompt's prefill and decodes, a sequence shorter than S + W)."""
    from vllm_adaptive.calibrate import SkippableModel

    layers = range(10, 20)
    path = profile_file(smollm2_dir, tmp_path, "sinks", [Profile("sinks", kv=budgets({i: SinkWindow(4, 128) for i in layers}))])
    long_text = " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))  # ~1k tokens
    out = result(run_engine(smollm2_dir, engine(smollm2_dir, path, max_num_batched_tokens=256) + """
first = llm.generate([LONG], SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0))[0]
runs = llm.generate([LONG, PROMPTS[0]], SamplingParams(max_tokens=24, temperature=0, logprobs=0))
print("RESULT", json.dumps({
    "prompt": [first.prompt_token_ids, [next(iter(d.values())).logprob for d in first.prompt_logprobs[1:]]],
    "runs": [[r.prompt_token_ids + list(r.outputs[0].token_ids),
              [d[t].logprob for t, d in zip(r.outputs[0].token_ids, r.outputs[0].logprobs)]] for r in runs]}))
""".replace("LONG", repr(long_text))))
    m = SkippableModel(smollm2_dir)

    def gap(ids: list[int], logprobs: list[float], windows: dict) -> float:
        """Mean |vLLM - transformers| over the last len(logprobs) tokens of `ids`."""
        ids_t = torch.tensor(ids)
        ref = torch.log_softmax(m.logits(ids_t, windows=windows)[:-1], -1).gather(1, ids_t[1:, None])[:, 0]
        return (ref[-len(logprobs):] - torch.tensor(logprobs)).abs().mean().item()

    variants = {"sinks": {i: SinkWindow(4, 128) for i in layers}, "no sinks": {i: 128 for i in layers}, "full": {}}
    prompt = {name: gap(*out["prompt"], w) for name, w in variants.items()}
    decode = {name: gap(*out["runs"][0], w) for name, w in variants.items()}
    assert len(out["prompt"][0]) > 900 and prompt["sinks"] < 0.02 and decode["sinks"] < 0.05, (prompt, decode)
    assert prompt["no sinks"] > 10 * prompt["sinks"] and prompt["full"] > 2 * prompt["sinks"], prompt
    assert decode["no sinks"] > 5 * decode["sinks"], decode
    short = out["runs"][1]
    assert len(short[0]) < 132 and gap(*short, {}) < 0.05  # shorter than S + W: the full model's mask


def test_bad_budgets_are_refused_at_start_up(smollm2_dir, tmp_path):
    cases = [
        ({"skip": [], "kv": {"30": 256}}, {}, "names layer '30', which does not exist"),
        ({"skip": [], "kv": {"3": "half"}}, {}, "use \"full\", \"none\", a number of tokens"),
        ({"skip": [], "kv": {"3": "none"}}, {}, "only skipped layers may have no KV"),
        ({"skip": [], "kv": {"3": 4096}}, {}, "spanning at least max_model_len=2048 tokens"),
        ({"skip": [], "kv": {"3": {"sink": 4, "window": 2044}}}, {}, "spanning at least max_model_len=2048 tokens"),
        ({"skip": [], "kv": {"3": {"sink": 4, "window": 128}}}, {"enable_prefix_caching": True},
         "start vLLM with --no-enable-prefix-caching"),
        ({"skip": [], "kv": {"3": {"sink": 4, "window": 128}}}, {"kv_cache_dtype": "fp8"}, "drop --kv-cache-dtype"),
        ({"skip": [], "kv": {"3": {"sink": 4, "window": 128}}}, {"disable_hybrid_kv_cache_manager": True},
         "drop --disable-hybrid-kv-cache-manager"),
        # one 2048-token sequence needs ~47 MB with full KV: 16 MB of KV memory cannot hold it
        ({"skip": [], "kv": {"0": "full"}}, {"kv_bytes": 16 << 20}, "larger than the available KV cache memory"),
    ]
    for spec, kw, message in cases:  # a valid file whose profile then gets the bad budgets by hand
        path = Path(profile_file(smollm2_dir, tmp_path, "bad", [Profile("bad")]))
        doc = json.loads(path.read_text())
        doc["profiles"]["bad"] |= spec
        path.write_text(json.dumps(doc))
        proc = run_engine(smollm2_dir, engine(smollm2_dir, str(path), **kw) + "\nprint('RESULT', 1)")
        assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-3000:]
