"""Prepared device check for sink + window KV (docs/kv-sinks-gpu.md): run on a GPU machine.

    python scripts/gpu_sink_check.py [MODEL_DIR]   # default: SmolLM2 from the model store

Prints one JSON line: the platform, whether the engine started (today it is refused off the CPU,
with the reason), and when it runs: pool blocks vs kv/layout.py, the mean |logprob| gap to
transformers with the exact mask, and decode tok/s vs full KV (bench.kv_budget's measurement:
8 sequences of 1,024 tokens, decode steps only). Exit code 1 when a check fails. Runs on the CPU
too (that is how it was tested). Run it from the repository root.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("VLLM_PLUGINS", "adaptive")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

SINK, WINDOW, LAYERS = 4, 128, range(10, 20)
TEXT = " ".join(f"item {i} is {i * 7 % 13}." for i in range(120))  # ~1k tokens


def main() -> int:
    import torch
    from vllm import LLM, SamplingParams
    from vllm.platforms import current_platform

    from bench.kv_budget import decode_rate
    from vllm_adaptive import model_store
    from vllm_adaptive.calibrate import read_text
    from vllm_adaptive.calibrate import SkippableModel
    from vllm_adaptive.kv import KV, SinkWindow, plan
    from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

    model = sys.argv[1] if len(sys.argv) > 1 else str(model_store.ensure())
    spec = ModelSpec.from_folder(Path(model))
    budgets = tuple(SinkWindow(SINK, WINDOW) if i in LAYERS else KV.FULL for i in range(spec.num_layers))
    out: dict = {"platform": current_platform.device_name if hasattr(current_platform, "device_name") else
                 str(current_platform._enum)}
    with tempfile.TemporaryDirectory() as tmp:
        path = ProfileSet.of(spec, [Profile("sinks", kv=budgets)], default="sinks").dump(Path(tmp) / "p.json")
        kw = dict(max_model_len=2048, enable_prefix_caching=False, max_num_batched_tokens=256,
                  kv_cache_memory_bytes=256 << 20)
        try:
            llm = LLM(model, additional_config={"adaptive": {"profiles": str(path)}}, **kw)
        except Exception as exc:  # the refusal off the CPU: report it, it is the expected result today
            out |= {"started": False, "error": str(exc).splitlines()[-1][:500]}
            print(json.dumps(out))
            return 0
        cfg = llm.llm_engine.engine_core.engine_core.scheduler.kv_cache_config
        page = cfg.kv_cache_groups[0].kv_cache_spec.page_size_bytes
        first = llm.generate([TEXT], SamplingParams(max_tokens=1, prompt_logprobs=0), use_tqdm=False)[0]
        ids = first.prompt_token_ids
        got = torch.tensor([next(iter(d.values())).logprob for d in first.prompt_logprobs[1:]])
        hay = llm.get_tokenizer()(read_text("pydoc:eval")).input_ids
        sink_rate = decode_rate(llm.llm_engine, llm.llm_engine.engine_core.engine_core, hay)
        del llm
        full = LLM(model, **kw)
        full_rate = decode_rate(full.llm_engine, full.llm_engine.engine_core.engine_core, hay)
    m = SkippableModel(Path(model))
    ids_t = torch.tensor(ids)
    ref = torch.log_softmax(m.logits(ids_t, windows={i: SinkWindow(SINK, WINDOW) for i in LAYERS})[:-1], -1)
    gap = (ref.gather(1, ids_t[1:, None])[:, 0] - got).abs().mean().item()
    predicted = plan(budgets).pool_blocks(256 << 20, page)
    out |= {"started": True, "num_blocks": cfg.num_blocks, "predicted_blocks": predicted, "logprob_gap": gap,
            "decode_tok_s": sink_rate, "full_decode_tok_s": full_rate, "speed_ratio": sink_rate / full_rate}
    print(json.dumps(out))
    return 0 if gap < 0.02 and cfg.num_blocks == predicted else 1


if __name__ == "__main__":
    sys.exit(main())
