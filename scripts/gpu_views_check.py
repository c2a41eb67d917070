"""Prepared device check for per-request skip profiles in compiled engines (docs/compiled-views.md).

    python scripts/gpu_views_check.py [MODEL_DIR]   # default: SmolLM2 from the model store

Starts the plugin with vLLM's default flags (compiled; CUDA graphs on a GPU) serving `full` (the
default) and two skip profiles per request, then the same profiles in an eager engine, and prints
one JSON line: the platform, what the compiled engine serves (today a GPU serves the default only,
with a warning), each profile's greedy text in both engines, and decode tok/s per profile in the
compiled engine (8 sequences, bench.engine_speed.decode_tps). Exit code 1 when a profile the
compiled engine says it serves differs from the eager engine's text. Runs on the CPU too (that is
how it was tested). Run it from the repository root.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_PLUGINS", "adaptive")
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # bench/ is not an installed package

PROFILES = {"skip-2": [14, 15], "skip-4": [8, 11, 14, 15]}
PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at", "The largest planet is"]


def engine(model: str, path: str, eager: bool) -> dict:
    """One engine (this process): its status and each profile's text and decode speed."""
    from vllm import LLM, SamplingParams

    from bench.engine_speed import decode_tps

    t0 = time.perf_counter()
    llm = LLM(model, enforce_eager=eager, dtype="float32", max_model_len=512, max_num_seqs=8,
              additional_config={"adaptive": {"profiles": path}})
    out: dict = {"startup_s": round(time.perf_counter() - t0, 1),
                 "stack": llm.collective_rpc("adaptive_status")[0]["stacks"][0], "texts": {}, "decode_tps_b8": {}}
    for name in ["full", *PROFILES]:
        def run(n: int) -> float:
            params = SamplingParams(max_tokens=n, min_tokens=n, temperature=0, ignore_eos=True,
                                    extra_args={"adaptive_profile": name})
            t = time.perf_counter()
            outs = llm.generate(PROMPTS * 2, params, use_tqdm=False)
            out["texts"][name] = [o.outputs[0].text for o in outs[:len(PROMPTS)]]
            return time.perf_counter() - t
        run(8)  # warm-up
        out["decode_tps_b8"][name] = round(decode_tps(run, 2 * len(PROMPTS)), 1)
    return out


def main() -> int:
    if len(sys.argv) > 2 and sys.argv[1] == "--engine":  # child: one engine per process
        print("RESULT " + json.dumps(engine(sys.argv[2], sys.argv[3], sys.argv[4] == "eager")), flush=True)
        return 0
    from vllm.platforms import current_platform

    from vllm_adaptive import model_store
    from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

    model = sys.argv[1] if len(sys.argv) > 1 else str(model_store.ensure())
    out: dict = {"platform": str(getattr(current_platform, "device_name", current_platform._enum))}
    with tempfile.TemporaryDirectory() as tmp:
        table = ProfileSet.of(ModelSpec.from_folder(Path(model)), [Profile(n, frozenset(s)) for n, s in PROFILES.items()])
        path = str(table.dump(Path(tmp) / "profiles.json"))
        for mode in ("compiled", "eager"):
            proc = subprocess.run([sys.executable, __file__, "--engine", model, path, mode], capture_output=True,
                                  text=True)
            lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
            out[mode] = json.loads(lines[-1][7:]) if lines else {"error": proc.stderr[-1500:]}
    compiled, eager = out["compiled"], out["eager"]
    served = set((compiled.get("stack") or {}).get("profiles", {}).get("profiles", {}))
    out["served_per_request_compiled"] = sorted(served)
    out["mismatch"] = sorted(n for n in served if compiled["texts"].get(n) != (eager.get("texts") or {}).get(n))
    print(json.dumps(out))
    return 1 if "error" in compiled or "error" in eager or out["mismatch"] else 0


if __name__ == "__main__":
    sys.exit(main())
