"""Stock vLLM as users run it vs the plugin: decode speed, TTFT and start-up per mode, with quality.

    nohup python -m bench.engine_speed [--profiles bench/results/profiles_smollm2.json] > /tmp/engine_speed.log &

Modes, each in a fresh single-process engine, one after the other (never two engines at once):
stock vLLM with its default flags (torch.compile), stock `--enforce-eager`, the plugin compiled
with default profile `full` and with each calibrated profile as default (one compiled engine per
profile: its skipped layers are not built), one compiled engine serving every profile per request
(a compiled view per profile; also with the grouping scheduler), and the plugin eager serving every
profile per request. The per-request engines also decode a mixed workload (two profiles alternating:
one batch vs one batch per profile). A second start of the compiled per-request engine shows what
vLLM's compile cache saves (the bench uses its own empty cache folder, so first starts are cold).

Per mode: decode tokens/s at batch 1 / 8 / 32 (t(64 new tokens) - t(1 new token), greedy, real
ShareGPT prompts, median of --reps), time to first token (one prompt, max_tokens=1, median),
start-up (LLM() constructor, compile included). Quality (held-back ΔPPL, top-1 agreement)
comes from the profile file. dtype: what the launcher picks on this CPU (fp32 without native
bf16, else the checkpoint's bf16), recorded with the CPU flags. Writes engine_speed.json/.png.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import child, data, plotting
from bench.machine import cpu_flags

BATCHES = (1, 8, 32)
NEW_TOKENS = 64


def worker(spec: dict) -> dict:
    """Run one mode in this (fresh) process and measure it."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams

    kwargs = dict(max_model_len=1024, max_num_seqs=max(BATCHES), dtype=spec["dtype"], enforce_eager=spec["eager"])
    if spec.get("profiles"):
        kwargs["additional_config"] = {"adaptive": {"profiles": spec["profiles"], "default_profile": spec["default"],
                                                    "serve": spec.get("per_request") or [spec["default"]]}}
    if spec.get("scheduler"):
        kwargs["scheduler_cls"] = spec["scheduler"]
    t0 = time.perf_counter()
    llm = LLM(spec["model"], **kwargs)
    startup = time.perf_counter() - t0
    prompts = [p[:300] for p in data.sharegpt_first_turns(max(BATCHES))]

    def params(n: int, profile: str | None) -> SamplingParams:
        extra = {"adaptive_profile": profile} if profile else None
        return SamplingParams(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True, extra_args=extra)

    def timed(batch: list[str], n: int, profile: str | list[str] | None) -> float:
        """Seconds to generate `n` tokens for `batch` (a list of profiles: alternating per request)."""
        sampling = [params(n, profile[i % len(profile)]) for i in range(len(batch))] if isinstance(profile, list) \
            else params(n, profile)
        t = time.perf_counter()
        llm.generate(batch, sampling, use_tqdm=False)
        return time.perf_counter() - t

    out: dict = {"startup_s": startup, "load_avg_at_start": os.getloadavg()[0], "profiles": {}}
    if spec.get("profiles"):  # compiled per-request engines: seconds each profile's view took to compile
        out["views_s"] = llm.collective_rpc("adaptive_status")[0]["stacks"][0]["views"]
    for batch in BATCHES:  # warm-up: first steps of each batch shape
        timed(prompts[:batch], 8, None)
    for profile in spec.get("per_request") or [None]:
        row: dict = {}
        for batch in BATCHES:
            tps = []
            for _ in range(spec["reps"]):
                tps.append(decode_tps(lambda n: timed(prompts[:batch], n, profile), batch))
            row[f"decode_tps_b{batch}"] = statistics.median(tps)
            row[f"decode_tps_b{batch}_range"] = [min(tps), max(tps)]
        row["ttft_s"] = statistics.median(timed(prompts[:1], 1, profile) for _ in range(2 * spec["reps"]))
        row["load_avg"] = os.getloadavg()[0]  # the machine is shared: other work slows every mode
        out["profiles"][profile or spec.get("default") or "stock"] = row
        print("PROGRESS", profile, json.dumps(row), flush=True)
    if spec.get("mixed"):
        out["mixed"] = mixed_workload(timed, prompts, spec["mixed"], spec["reps"])
    return out


def mixed_workload(timed, prompts: list[str], profiles: list[str], reps: int) -> dict:
    """Decode tok/s of a batch whose requests alternate between `profiles`: all in one generate
    call (steps mix profiles: the masked view) vs grouped, one call per profile after the other
    (every step has one profile: its compiled view), as a router that groups by profile would."""
    out: dict = {"profiles": profiles}
    for batch in BATCHES[1:]:
        groups = [[p for i, p in enumerate(prompts[:batch]) if i % len(profiles) == k] for k in range(len(profiles))]
        mixed, grouped = [], []
        for _ in range(reps):
            mixed.append(decode_tps(lambda n: timed(prompts[:batch], n, profiles), batch))
            grouped.append(decode_tps(lambda n: sum(timed(g, n, p) for g, p in zip(groups, profiles)), batch))
        out[f"mixed_tps_b{batch}"] = statistics.median(mixed)
        out[f"grouped_tps_b{batch}"] = statistics.median(grouped)
    print("PROGRESS mixed", json.dumps(out), flush=True)
    return out


def decode_tps(generate: Callable[[int], float], batch: int) -> float:
    """Decode tokens/s of `batch` sequences, from `generate(n)` = seconds to generate n new tokens
    each: t(NEW_TOKENS) - t(1) leaves prefill and the first token out."""
    first = generate(1)
    return batch * (NEW_TOKENS - 1) / (generate(NEW_TOKENS) - first)


def run_mode(spec: dict, env: dict[str, str], log) -> dict:
    measured, stderr = child.run("bench.engine_speed", ["--worker", json.dumps(spec)], env)
    log.write(stderr[-20000:])
    log.flush()
    return {"error": stderr[-2000:]} if measured is None else measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--profiles", default="bench/results/profiles_smollm2.json")
    parser.add_argument("--calibrated", default="calibrated-2,calibrated-4,calibrated-6,calibrated-8")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--modes", default=None,
                        help="comma-separated mode names to run (default: all); with an existing "
                        "engine_speed.json, its other modes are kept")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        child.emit(worker(json.loads(args.worker)))
        return

    from vllm_adaptive import cli, model_store

    model = str(model_store.ensure())
    profiles = str(Path(args.profiles).resolve())
    doc = json.loads(Path(profiles).read_text())
    calibrated = [c for c in args.calibrated.split(",") if c]
    dtype_args, reason = cli.cpu_dtype_args([], cli._read_cpuinfo())
    dtype = dtype_args[-1] if dtype_args else "auto"
    mixed = ["full", calibrated[1] if len(calibrated) > 1 else calibrated[0]] if calibrated else None
    cache = tempfile.mkdtemp(prefix="vllm-cache-")  # cold compile cache for first starts
    env = {**os.environ, "VLLM_CACHE_ROOT": cache, "VLLM_CPU_KVCACHE_SPACE": "1", "PYTHONUNBUFFERED": "1"}
    base = {"model": model, "dtype": dtype, "reps": args.reps}
    modes: list[tuple[str, dict, str]] = [
        ("stock compiled", {**base, "eager": False}, ""),
        ("stock eager", {**base, "eager": True}, ""),
        ("plugin compiled full", {**base, "eager": False, "profiles": profiles, "default": "full"}, "adaptive"),
        *[(f"plugin compiled {c}", {**base, "eager": False, "profiles": profiles, "default": c}, "adaptive")
          for c in calibrated],
        ("plugin eager per-request", {**base, "eager": True, "profiles": profiles, "default": "full",
                                      "per_request": ["full", *calibrated], "mixed": mixed}, "adaptive"),
        ("plugin compiled per-request", {**base, "eager": False, "profiles": profiles, "default": "full",
                                         "per_request": ["full", *calibrated], "mixed": mixed}, "adaptive"),
        ("plugin compiled per-request + grouping scheduler",
         {**base, "eager": False, "profiles": profiles, "default": "full", "per_request": mixed, "mixed": mixed,
          "scheduler": "vllm_adaptive.core.sched.ProfileGroupingScheduler"}, "adaptive"),
        ("plugin compiled per-request (2nd start, compile cache)",
         {**base, "eager": False, "profiles": profiles, "default": "full", "per_request": ["full", *calibrated],
          "reps": 1}, "adaptive"),
    ]
    if args.modes:
        wanted = set(args.modes.split(","))
        unknown = wanted - {name for name, _, _ in modes}
        if unknown:
            parser.error(f"unknown modes {sorted(unknown)}; modes: {[name for name, _, _ in modes]}")
        modes = [m for m in modes if m[0] in wanted]
    out = Path(args.out)
    previous = json.loads((out / "engine_speed.json").read_text()) if args.modes and (out / "engine_speed.json").exists() else None
    result = {"model": doc["model"], "dtype": dtype, "dtype_reason": reason, "cpu_flags": cpu_flags(),
              "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
              "batches": BATCHES, "new_tokens": NEW_TOKENS, "reps": args.reps, "modes": []}
    if previous:  # keep the modes measured by an earlier run (each row records its own reps)
        result["modes"] = [{"reps": previous["reps"], **r} for r in previous["modes"]
                           if r["mode"] not in {name for name, _, _ in modes}]
        result["mixed"] = [m for m in previous.get("mixed", []) if m["mode"] not in {name for name, _, _ in modes}]
    with open(Path(tempfile.gettempdir()) / "engine_speed_engines.log", "w") as log:
        for name, spec, plugins in modes:
            print(f"[engine_speed] {name} ...", flush=True)
            measured = run_mode(spec, {**env, "VLLM_PLUGINS": plugins}, log)
            for profile, row in measured.get("profiles", {}).items():
                quality = (doc["profiles"].get(profile) or {}).get("quality") if plugins else None
                skip = (doc["profiles"].get(profile) or {}).get("skip") if plugins else []
                result["modes"].append({"mode": name, "profile": profile, "compiled": not spec["eager"], "reps": spec["reps"],
                                        "skip": skip, "startup_s": measured["startup_s"],
                                        "view_compile_s": (measured.get("views_s") or {}).get(profile),
                                        "load_avg_at_start": measured["load_avg_at_start"], **row, "quality": quality})
                print(f"  {profile}: " + " ".join(f"b{b}={row[f'decode_tps_b{b}']:.1f}" for b in BATCHES)
                      + f" tok/s ttft={row['ttft_s'] * 1000:.0f} ms startup={measured['startup_s']:.1f} s", flush=True)
            if "mixed" in measured:
                result.setdefault("mixed", []).append({"mode": name, **measured["mixed"]})
                print(f"  mixed: {measured['mixed']}", flush=True)
            if "error" in measured:
                result["modes"].append({"mode": name, "error": measured["error"]})
                print(f"  failed: {measured['error'][-500:]}", flush=True)
            (out / "engine_speed.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "engine_speed.png")


def plot(result: dict, path: Path) -> None:
    rows = [r for r in result["modes"] if "error" not in r and "2nd start" not in r["mode"]]
    fig, axes = plotting.subplots(1, 2, figsize=(13, 5))
    labels = [f"{r['mode']}" +
              (f" [{r['profile']}]" if "per-request" in r["mode"] else "") for r in rows]
    width = 0.27
    for k, batch in enumerate(result["batches"]):
        axes[0].barh([i + k * width for i in range(len(rows))], [r[f"decode_tps_b{batch}"] for r in rows],
                     height=width, label=f"batch {batch}")
    axes[0].set_yticks([i + width for i in range(len(rows))], labels, fontsize=7)
    axes[0].invert_yaxis()
    axes[0].set(xlabel="decode tokens/s", title=f"SmolLM2-135M, vLLM CPU ({result['dtype']}, {result['cores']} cores)")
    stock = next((r for r in rows if r["mode"] == "stock compiled"), None)
    for mode, marker, label in (("plugin compiled per-request", "^", "plugin compiled, one engine, per request"),
                                ("plugin eager per-request", "s", "plugin eager, one engine, per request"),
                                (None, "o", "plugin compiled, one engine per profile")):
        pts = [r for r in rows if stock and r.get("quality") and (r["mode"] == mode if mode else
                                                                   r["compiled"] and "per-request" not in r["mode"])]
        axes[1].plot([r["quality"]["delta_ppl_pct"] for r in pts],
                     [r["decode_tps_b8"] / stock["decode_tps_b8"] for r in pts], marker, label=label)
        for r in pts:
            axes[1].annotate(r["profile"], (r["quality"]["delta_ppl_pct"], r["decode_tps_b8"] / stock["decode_tps_b8"]),
                             fontsize=6)
    axes[1].axhline(1.0, color="grey", lw=0.8, label="stock compiled")
    axes[1].set(xlabel="held-back ΔPPL (%)", ylabel="decode tok/s at batch 8 / stock compiled", xscale="symlog")
    axes[0].legend(fontsize=7)
    plotting.save(fig, path, [axes[1]])


if __name__ == "__main__":
    main()
