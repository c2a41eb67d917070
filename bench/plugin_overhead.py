"""What the per-request machinery costs profile `full` in an eager engine, A/B in one process.

    python -m bench.plugin_overhead [--reps 5] [--batch 8]

One eager engine serves `full` and another profile per request, so its decoder layers are
SkippableLayers that ask the step plan before every call. Between measurements the layers' class
is switched back and forth between that and vLLM's own layer class (same modules, same weights,
same KV), so "plugin" and "stock" alternate in one process and drift in the load of this shared
machine hits both alike. Decode time = t(64 new tokens) - t(1 new token), greedy, batch of real
ShareGPT prompts, `full` requested. Writes plugin_overhead.json.

A compiled engine needs no such check: with default `full` it builds vLLM's own layers (no
wrapper, no plan), so its graph is stock vLLM's.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from bench import data

os.environ.setdefault("VLLM_PLUGINS", "adaptive")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

NEW_TOKENS = 64


def set_wrapped(worker, wrapped: bool) -> int:
    """Switch every SkippableLayer of the worker's model to its stock class (or back)."""
    from vllm_adaptive.models.layers import SkippableLayer, _SKIPPABLE

    stock_of = {v: k for k, v in _SKIPPABLE.items()}
    n = 0
    for module in worker.get_model().modules():
        cls = type(module)
        if not wrapped and issubclass(cls, SkippableLayer):
            module.__class__ = stock_of[cls]
            n += 1
        elif wrapped and cls in _SKIPPABLE and hasattr(module, "adaptive_plan"):
            module.__class__ = _SKIPPABLE[cls]
            n += 1
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="bench/results/profiles_smollm2.json")
    parser.add_argument("--other", default="calibrated-4", help="the second served profile")
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    from vllm import LLM, SamplingParams

    from vllm_adaptive import cli, model_store

    dtype_args, _ = cli.cpu_dtype_args([], cli._read_cpuinfo())
    llm = LLM(str(model_store.ensure()), enforce_eager=True, max_model_len=1024, max_num_seqs=args.batch,
              dtype=dtype_args[-1] if dtype_args else "auto",
              additional_config={"adaptive": {"profiles": str(Path(args.profiles).resolve())}})
    prompts = [p[:300] for p in data.sharegpt_first_turns(args.batch)]

    def decode_seconds() -> float:
        def run(n: int) -> float:
            t = time.perf_counter()
            sp = SamplingParams(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True,
                                extra_args={"adaptive_profile": "full"})
            llm.generate(prompts, sp, use_tqdm=False)
            return time.perf_counter() - t
        return run(NEW_TOKENS) - run(1)

    decode_seconds()  # warm-up
    times: dict[str, list[float]] = {"plugin": [], "stock": []}
    switched = []
    for rep in range(args.reps):
        for variant in (("plugin", "stock") if rep % 2 == 0 else ("stock", "plugin")):
            switched.append(llm.collective_rpc(set_wrapped, args=(variant == "plugin",))[0])
            times[variant].append(decode_seconds())
    tokens = args.batch * (NEW_TOKENS - 1)
    tps = {k: [tokens / t for t in v] for k, v in times.items()}
    ratio = statistics.median(times["plugin"]) / statistics.median(times["stock"])
    result = {"batch": args.batch, "new_tokens": NEW_TOKENS, "reps": args.reps,
              "dtype": dtype_args[-1] if dtype_args else "auto", "layers_switched_per_measurement": switched,
              "decode_tps": {k: statistics.median(v) for k, v in tps.items()},
              "decode_tps_all": tps, "plugin_time_over_stock": ratio, "load_avg": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    (Path(args.out) / "plugin_overhead.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
