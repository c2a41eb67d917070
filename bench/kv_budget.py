"""Per-layer KV budgets in vLLM: capacity, perplexity and needle retrieval at 25 / 50 / 75 % of the KV.

    python -m bench.kv_budget [--profiles bench/results/kv_profiles_smollm2.json] [--kv-mib 288]

Allocations (uniform / pyramid / sensitivity per fraction) come from the profile file that
`vllm-adaptive calibrate` wrote (created if missing); one more configuration combines the
skip profile calibrated-2 with a sensitivity allocation over the remaining layers. Each
configuration runs in a fresh single-process vLLM engine (CPU, eager, plugin, prefix caching
off, prefill chunks of 512 tokens so that a windowed layer never holds a whole prompt at once)
with the same fixed KV memory. "KV fraction" counts the whole blocks a 2,048-token sequence holds
in vLLM's pool (a window's partial first block included), relative to full KV:
* capacity: vLLM's pool (blocks, groups) and the predicted sequences of 2,048 tokens that fit;
  then 32 requests of 1,920 prompt + 192 generated tokens submitted at once (long enough that
  every admitted request finishes its prefill before the first one completes), counting the
  most sequences decoding (prefill done) in the same step and vLLM's preemptions;
* perplexity of held-back text (pydoc:eval, 4 chunks of 2,048 tokens) from vLLM's prompt logprobs;
* needle in a haystack: a 5-digit "magic number" sentence inserted into held-back pydoc text at
  depth 10..90 % of 1,024 and 2,048-token contexts (2 needles each); correct when the greedy
  answer contains the number (calibration's retrieval signal uses another task: "access code"
  lines in calibration text);
* decode speed: 8 sequences of 1,024 prompt tokens decoding together, tokens per second over 48
  steps in which every one of them decodes (same batch in every configuration).
Configurations: those matching --configs (fnmatch patterns; default: full; at 50 %: plain-window
sensitivity, and uniform and sensitivity with 4 sinks; the retrieval allocation with 4 sinks at 25 / 50 /
75 %; `--configs "*"` adds the others and the skip + KV combination).
Writes kv_budget.json / kv_budget.png.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

from bench import child, machine, plotting
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

os.environ.setdefault("VLLM_PLUGINS", "adaptive")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.pop("VLLM_CPU_KVCACHE_SPACE", None)  # it would override the fixed KV memory

CONTEXT, PROMPT, GENERATE, REQUESTS = 2048, 1920, 192, 32
DECODE_BATCH, DECODE_PROMPT, DECODE_STEPS = 8, 1024, 48
DEFAULT_CONFIGS = "full,kv-sensitivity-50,kv-uniform-sink4-50,kv-sensitivity-sink4-50,kv-retrieval-sink4-*"
NIAH_LENGTHS, NIAH_DEPTHS, NIAH_REPS = (1024, 2048), (0.1, 0.3, 0.5, 0.7, 0.9), 2
TOKEN_BYTES = 2 * 3 * 64 * 2  # SmolLM2: one token of one layer, K and V, bf16


def niah_prompts(tok, hay: list[int]) -> list[tuple[list[int], int, float, str]]:
    rng = random.Random(0)
    out = []
    question = tok("\n\nWhat is the magic number mentioned in the text above? The magic number is").input_ids
    for length in NIAH_LENGTHS:
        for depth in NIAH_DEPTHS:
            for _ in range(NIAH_REPS):
                number = str(rng.randint(10000, 99999))
                needle = tok(f" The magic number is {number}. ").input_ids
                start = rng.randint(0, len(hay) - length)
                body = hay[start : start + length - len(needle) - len(question)]
                cut = int(depth * len(body))
                out.append((body[:cut] + needle + body[cut:] + question, length, depth, number))
    return out


def decode_rate(engine, core, hay: list[int]) -> float:
    """Tokens per second of DECODE_BATCH sequences decoding together (prefill excluded)."""
    import time

    from vllm import SamplingParams

    params = SamplingParams(max_tokens=DECODE_STEPS + 8, min_tokens=DECODE_STEPS + 8, ignore_eos=True, temperature=0)
    for i in range(DECODE_BATCH):
        start = (i * 4999) % (len(hay) - DECODE_PROMPT)
        engine.add_request(f"dec{i}", {"prompt_token_ids": hay[start : start + DECODE_PROMPT]}, params)
    while core.scheduler.waiting or any(r.num_computed_tokens < r.num_prompt_tokens for r in core.scheduler.running):
        engine.step()
    engine.step()  # the step that samples the last prefill's first token
    assert len(core.scheduler.running) == DECODE_BATCH, "the decode batch does not fit in the KV pool"
    start = time.perf_counter()
    for _ in range(DECODE_STEPS):
        engine.step()
    rate = DECODE_BATCH * DECODE_STEPS / (time.perf_counter() - start)
    while engine.has_unfinished_requests():
        engine.step()
    return rate


def worker(model: str, profiles: str, kv_bytes: int) -> dict:
    """One configuration in this process: capacity, perplexity, NIAH."""
    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams

    from vllm_adaptive.calibrate import chunks, read_text

    llm = LLM(model, enforce_eager=True, max_model_len=PROMPT + GENERATE, kv_cache_memory_bytes=kv_bytes,
              enable_prefix_caching=False, max_num_seqs=64, max_num_batched_tokens=512,
              additional_config={"adaptive": {"profiles": profiles}})
    engine = llm.llm_engine
    core = engine.engine_core.engine_core
    cfg = core.scheduler.kv_cache_config
    tok = AutoTokenizer.from_pretrained(model)
    hay = tok(read_text("pydoc:eval")).input_ids
    gen = SamplingParams(max_tokens=GENERATE, min_tokens=GENERATE, ignore_eos=True, temperature=0)
    seen = {}  # every request that ran, to sum its preemptions at the end
    for i in range(REQUESTS):
        start = (i * 3001) % (len(hay) - PROMPT)
        engine.add_request(f"cap{i}", {"prompt_token_ids": hay[start : start + PROMPT]}, gen)
    peak_decoding = peak_running = 0
    while engine.has_unfinished_requests():
        engine.step()
        running = core.scheduler.running
        seen |= {r.request_id: r for r in running}
        peak_running = max(peak_running, len(running))
        peak_decoding = max(peak_decoding, sum(r.num_computed_tokens >= r.num_prompt_tokens for r in running))
    preemptions = sum(r.num_preemptions for r in seen.values())
    decode_tok_s = decode_rate(engine, core, hay)
    held = chunks(tok, read_text("pydoc:eval"), 4, CONTEXT)
    lp = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=0)
    nll, count = 0.0, 0
    for out in llm.generate([{"prompt_token_ids": ids.tolist()} for ids in held], lp, use_tqdm=False):
        for d in out.prompt_logprobs[1:]:
            nll -= next(iter(d.values())).logprob
            count += 1
    cases = niah_prompts(tok, hay)
    outs = llm.generate([{"prompt_token_ids": c[0]} for c in cases], SamplingParams(max_tokens=8, temperature=0),
                        use_tqdm=False)
    niah = [{"length": c[1], "depth": c[2], "found": c[3] in o.outputs[0].text} for c, o in zip(cases, outs)]
    return {
        "num_blocks": cfg.num_blocks,
        "block_size": cfg.kv_cache_groups[0].kv_cache_spec.block_size,
        "groups": [[getattr(g.kv_cache_spec, "sliding_window", None), getattr(g.kv_cache_spec, "sink_tokens", None),
                    len(g.layer_names)] for g in cfg.kv_cache_groups],
        "decode_tok_s": decode_tok_s,
        "peak_decoding": peak_decoding, "peak_running": peak_running, "preemptions": preemptions,
        "ppl": math.exp(nll / count), "niah": niah, "niah_accuracy": sum(n["found"] for n in niah) / len(niah),
    }


def configurations(table: ProfileSet, skip_table: ProfileSet | None) -> dict[str, Profile]:
    """name -> profile (skip, kv, strategy, kv_fraction) of every configuration to run."""
    configs = {"full": Profile("full", strategy="full", kv_fraction=1.0)}
    configs |= {n: p for n, p in table.profiles.items() if p.kv}
    if skip_table and "calibrated-2" in skip_table.profiles:
        from vllm_adaptive.calibrate import default_tier_size
        from vllm_adaptive.kv import KV, STRATEGIES, LayerSignals, kv_fraction

        skip = skip_table.profiles["calibrated-2"].skip
        kv = table.sections["kv_calibration"]
        layers = table.num_layers
        running = [i for i in range(layers) if i not in skip]
        budgets = STRATEGIES["sensitivity"]().allocate(
            0.5, running, layers, kv["reference_tokens"], kv["block_size"], default_tier_size(len(running)),
            LayerSignals(kv["sensitivity"]))
        budgets = [KV.NONE if i in skip else b for i, b in enumerate(budgets)]
        configs["skip2-kv-sensitivity-50"] = Profile(
            "skip2-kv-sensitivity-50", skip, "skip+kv-sensitivity", kv=tuple(budgets),
            kv_fraction=kv_fraction(budgets, kv["reference_tokens"], kv["block_size"]))
    return configs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="bench/results/kv_profiles_smollm2.json")
    parser.add_argument("--skip-profiles", default="bench/results/profiles_smollm2.json")
    parser.add_argument("--kv-mib", type=int, default=288, help="fixed KV memory of every engine")
    parser.add_argument("--configs", default=DEFAULT_CONFIGS,
                        help="comma-separated fnmatch patterns of the configurations to run (default: %(default)s)")
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from vllm_adaptive import model_store

    model = str(model_store.ensure())
    kv_bytes = args.kv_mib << 20
    if args.worker:
        child.emit(worker(model, args.worker, kv_bytes))
        return
    path = Path(args.profiles)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "vllm_adaptive.cli", "calibrate", model, "--budgets", "",
                        "--strategies", "", "--out", str(path)], check=True)
    served = ModelSpec.from_folder(model)
    table = ProfileSet.load(path, served)
    skip_path = Path(args.skip_profiles)
    configs = configurations(table, ProfileSet.load(skip_path, served) if skip_path.exists() else None)
    patterns = args.configs.split(",")
    configs = {n: p for n, p in configs.items() if any(fnmatch(n, pat) for pat in patterns)}

    from vllm_adaptive.kv import budget_json, plan

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, entry in configs.items():
            file = ProfileSet.of(served, [Profile(name, entry.skip, kv=entry.kv)], default=name).dump(
                Path(tmp) / f"{name}.json")
            res, stderr = child.run("bench.kv_budget", ["--kv-mib", str(args.kv_mib), "--worker", str(file)])
            if res is None:
                print(f"{name}: engine failed\n{stderr[-3000:]}", file=sys.stderr, flush=True)
                continue
            kv_plan = plan(entry.kv_budgets(served.num_layers))
            page = res["block_size"] * TOKEN_BYTES
            res |= {"strategy": entry.strategy, "kv_fraction": entry.kv_fraction, "skip": sorted(entry.skip),
                    "kv": [budget_json(b) for b in entry.kv] if entry.kv else None,
                    "calibrate_quality": entry.quality or None,
                    "predicted_num_blocks": kv_plan.pool_blocks(kv_bytes, page),
                    "predicted_max_sequences": kv_plan.max_sequences(kv_bytes, page, CONTEXT, res["block_size"])}
            results[name] = res
            print(f"{name:<26} KV {res['kv_fraction']:.2f}  blocks {res['num_blocks']:>5} (pred {res['predicted_num_blocks']})"
                  f"  seqs pred {res['predicted_max_sequences']:>3} peak decoding {res['peak_decoding']:>3}"
                  f" (preemptions {res['preemptions']})"
                  f"  ppl {res['ppl']:.2f}  NIAH {res['niah_accuracy']:.2f}  decode {res['decode_tok_s']:.0f} tok/s",
                  flush=True)
            report(results, kv_bytes, Path(args.out), args.kv_mib)  # after each one: a crash keeps the rest



def report(results: dict, kv_bytes: int, out: Path, kv_mib: int) -> None:
    """kv_budget.json and kv_budget.png from the configurations measured so far."""
    if "full" not in results:
        return
    base = results["full"]
    for res in results.values():
        res["capacity_ratio"] = res["peak_decoding"] / base["peak_decoding"]
        res["ppl_increase_pct"] = 100 * (res["ppl"] / base["ppl"] - 1)
        res["niah_relative"] = res["niah_accuracy"] / base["niah_accuracy"] if base["niah_accuracy"] else None
        res["decode_ratio"] = res["decode_tok_s"] / base["decode_tok_s"]
    out.mkdir(parents=True, exist_ok=True)
    (out / "kv_budget.json").write_text(json.dumps({
        "machine": machine.describe(), "command": machine.command("bench.kv_budget"),
        "model": "SmolLM2-135M-Instruct", "kv_bytes": kv_bytes, "context": CONTEXT, "prompt": PROMPT,
        "generate": GENERATE, "max_num_batched_tokens": 512,
        "decode": {"batch": DECODE_BATCH, "prompt": DECODE_PROMPT, "steps": DECODE_STEPS},
        "requests": REQUESTS, "niah": {"lengths": NIAH_LENGTHS, "depths": NIAH_DEPTHS, "reps": NIAH_REPS},
        "results": results}, indent=1))
    fig, axes = plotting.subplots(1, 4, figsize=(20, 4.2))
    for strategy in sorted({r["strategy"] for r in results.values()} - {"full"}):
        rows = sorted((r for r in results.values() if r["strategy"] == strategy), key=lambda r: r["kv_fraction"])
        x = [r["kv_fraction"] for r in rows]
        axes[0].plot(x, [r["capacity_ratio"] for r in rows], "o-", label=strategy)
        axes[1].plot(x, [r["ppl_increase_pct"] for r in rows], "o-", label=strategy)
        axes[2].plot(x, [r["niah_accuracy"] for r in rows], "o-", label=strategy)
        axes[3].plot(x, [r["decode_ratio"] for r in rows], "o-", label=strategy)
    axes[0].axhline(1.8, ls=":", c="gray", label="target 1.8x at 0.5")
    axes[2].axhline(base["niah_accuracy"], ls="--", c="k", label="full KV")
    axes[0].set(xlabel="KV kept (fraction of full, 2,048-token context)", ylabel="concurrent sequences vs full",
                title=f"vLLM capacity at {kv_mib} MiB KV")
    axes[1].set(xlabel="KV kept", ylabel="held-back perplexity increase (%)", yscale="log", title="perplexity (vLLM)")
    axes[2].set(xlabel="KV kept", ylabel="needle retrieval accuracy", title="needle in a haystack (1k/2k context)")
    axes[3].axhline(0.9, ls=":", c="gray", label="target: within 10 %")
    axes[3].set(xlabel="KV kept", ylabel="decode tok/s vs full KV",
                title=f"decode speed, {DECODE_BATCH} sequences of {DECODE_PROMPT} tokens")
    plotting.save(fig, out / "kv_budget.png", axes)



if __name__ == "__main__":
    main()
