"""Layer skipping in vLLM: decode speed vs quality for balanced / calibrated / random skip sets.

    python -m bench.skip_pareto [--profiles bench/results/profiles_smollm2.json] [--reps 3]

Quality (ΔPPL, top-1 agreement, KL on held-back pydoc text) comes from the profile file that
`vllm-adaptive calibrate` wrote (calibrated on the other half of the text); it is created
with no quality floor if missing. Speed: one vLLM engine (CPU, eager, single process) serves
every profile per request; for each profile a batch of 8 real ShareGPT prompts is decoded
greedily, decode time = t(64 new tokens) - t(1 new token), repeated in round-robin order.
Also a mixed batch (half `full`, half another profile) to show what compute-and-mask costs.
Writes skip_pareto.json / skip_pareto.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench import data, plotting

os.environ.setdefault("VLLM_PLUGINS", "adaptive")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")

BATCH, NEW_TOKENS = 8, 64


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="bench/results/profiles_smollm2.json")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--mixed-with", default="calibrated-4")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    from vllm_adaptive import model_store

    model = str(model_store.ensure())
    path = Path(args.profiles)
    if not path.exists():
        subprocess.run([sys.executable, "-m", "vllm_adaptive.cli", "calibrate", model, "--out", str(path)], check=True)
    doc = json.loads(path.read_text())

    from vllm import LLM, SamplingParams

    llm = LLM(model, enforce_eager=True, max_model_len=1024, max_num_seqs=2 * BATCH,
              additional_config={"adaptive": {"profiles": str(path.resolve())}})
    prompts = [p[:300] for p in data.sharegpt_first_turns(BATCH)]

    def params(profile: str, n: int) -> SamplingParams:
        return SamplingParams(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True,
                              extra_args={"adaptive_profile": profile})

    def decode_seconds(profiles: list[str]) -> float:
        t0 = time.perf_counter()
        llm.generate(prompts, [params(p, 1) for p in profiles], use_tqdm=False)
        t1 = time.perf_counter()
        llm.generate(prompts, [params(p, NEW_TOKENS) for p in profiles], use_tqdm=False)
        return (time.perf_counter() - t1) - (t1 - t0)

    names = list(doc["profiles"])
    decode_seconds(["full"] * BATCH)  # warm-up
    times: dict[str, list[float]] = {n: [] for n in names}
    mixed_key = f"mixed:full+{args.mixed_with}"
    times[mixed_key] = []
    for _ in range(args.reps):
        for name in names:
            times[name].append(decode_seconds([name] * BATCH))
        times[mixed_key].append(decode_seconds(["full"] * (BATCH // 2) + [args.mixed_with] * (BATCH // 2)))
    steps_tokens = BATCH * (NEW_TOKENS - 1)
    full_tps = steps_tokens / statistics.median(times["full"])
    rows = []
    for name, ts in times.items():
        tps = [steps_tokens / t for t in ts]
        prof = doc["profiles"].get(name, {})
        rows.append({
            "profile": name, "skip": prof.get("skip"), "strategy": prof.get("strategy", "mixed"),
            "decode_tokens_per_s": statistics.median(tps), "min_tps": min(tps), "max_tps": max(tps),
            "speedup_vs_full": statistics.median(tps) / full_tps, "quality": prof.get("quality"),
        })
        print(f"{name:<28} skip={prof.get('skip')} {statistics.median(tps):7.1f} tok/s "
              f"x{statistics.median(tps) / full_tps:.3f} (range {min(tps):.1f}-{max(tps):.1f}) "
              f"dPPL={((prof.get('quality') or {}).get('delta_ppl_pct', float('nan'))):.1f}%")
    result = {"model": doc["model"], "batch": BATCH, "new_tokens": NEW_TOKENS, "reps": args.reps,
              "calibration": doc.get("calibration"), "rows": rows}
    out = Path(args.out)
    (out / "skip_pareto.json").write_text(json.dumps(result, indent=1))
    plot(rows, out / "skip_pareto.png")


def plot(rows: list[dict], path: Path) -> None:
    fig, axes = plotting.subplots(1, 2, figsize=(12, 4.8))
    for strategy, marker in (("balanced", "s"), ("calibrated", "o"), ("random", "^")):
        pts = [r for r in rows if r["strategy"] == strategy]
        for ax, key, label in ((axes[0], "delta_ppl_pct", "held-back ΔPPL (%)"),
                               (axes[1], "top1_agreement", "top-1 agreement with full")):
            ax.plot([r["quality"][key] for r in pts], [r["speedup_vs_full"] for r in pts], marker, label=strategy)
            for r in pts:
                ax.annotate(str(len(r["skip"])), (r["quality"][key], r["speedup_vs_full"]), fontsize=7)
            ax.set(xlabel=label, ylabel="decode tokens/s vs full (same engine)")
    axes[0].set_xscale("symlog")
    axes[0].axvline(5, color="grey", lw=0.8)
    for ax in axes:
        ax.axhline(1.25, color="grey", lw=0.8, ls=":")
    axes[0].set_title("SmolLM2-135M, vLLM CPU: speed vs quality (labels: layers skipped)")
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
