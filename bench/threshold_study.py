"""Similarity-threshold study: precision / recall / false hits vs threshold, per encoder and category.

    python -m bench.threshold_study [--pairs 20000] [--out bench/results]

* QQP (../shared/data/qqp_pairs.jsonl.gz, labelled duplicate pairs): precision, recall,
  false-hit share (non-duplicates among pairs that would be served) and FPR per threshold,
  for all pairs and for the math-looking subset.
* Nearest-distinct false hits on real prompts that are all *different* questions: HumanEval
  (code) and ShareGPT first turns (chat). For a threshold t, the share of prompts whose
  nearest other prompt scores >= t is the share of queries that would be served another
  question's answer once the cache holds the rest.
Writes threshold_study.json and threshold_study.png, and prints the thresholds it recommends.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from bench import data, plotting
from controller import embeddings

THRESHOLDS = np.round(np.arange(0.50, 0.996, 0.01), 2)
MATH = re.compile(r"\b(solve|equation|integral|derivative|probability|prime|factorial|calculus|algebra|"
                  r"sum of|square root|log|matrix|math|\d+\s*[-+*/^x]\s*\d+)\b", re.I)
MAX_FALSE_HIT = 0.01  # the false-hit share we accept when picking a threshold


def pair_curve(sims: np.ndarray, labels: np.ndarray) -> list[dict]:
    rows = []
    for t in THRESHOLDS:
        served = sims >= t
        tp = int((served & labels).sum())
        fp = int((served & ~labels).sum())
        rows.append({
            "threshold": float(t), "served": int(served.sum()),
            "precision": tp / max(tp + fp, 1), "recall": tp / max(int(labels.sum()), 1),
            "false_hit_share": fp / max(tp + fp, 1), "fpr": fp / max(int((~labels).sum()), 1),
        })
    return rows


def nearest_distinct(vectors: np.ndarray) -> np.ndarray:
    sims = vectors @ vectors.T
    np.fill_diagonal(sims, -1.0)
    return sims.max(axis=1)


def distinct_curve(nearest: np.ndarray) -> list[dict]:
    return [{"threshold": float(t), "false_hit_share": float((nearest >= t).mean())} for t in THRESHOLDS]


def pick(curve: list[dict], key: str = "false_hit_share", limit: float = MAX_FALSE_HIT) -> float | None:
    """Smallest threshold whose false-hit share is at most `limit`."""
    ok = [row["threshold"] for row in curve if row[key] <= limit and row.get("served", 1) > 0]
    return min(ok) if ok else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=10000, help="QQP pairs sampled, seeded (0 = all 80,854)")
    parser.add_argument("--chat", type=int, default=2000, help="ShareGPT first turns")
    parser.add_argument("--encoders", default="minilm-int8-onnx,minilm-fp32-torch")
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    pairs = data.qqp_pairs(args.pairs, seed=0)
    labels = np.array([p["duplicate"] for p in pairs])
    math_mask = np.array([bool(MATH.search(p["a"]) or MATH.search(p["b"])) for p in pairs])
    code, chat = data.humaneval_prompts(), data.sharegpt_first_turns(args.chat)

    result: dict = {"pairs": len(pairs), "duplicates": int(labels.sum()), "math_pairs": int(math_mask.sum()),
                    "code_prompts": len(code), "chat_prompts": len(chat), "max_false_hit": MAX_FALSE_HIT,
                    "encoders": {}}
    qqp_sims = {}
    for name in args.encoders.split(","):
        encoder = embeddings.load(name)
        t0 = time.perf_counter()
        a = embeddings.encode_many(encoder, [p["a"] for p in pairs])
        b = embeddings.encode_many(encoder, [p["b"] for p in pairs])
        encode_s = time.perf_counter() - t0
        sims = (a * b).sum(axis=1)
        qqp_sims[name] = sims
        t0 = time.perf_counter()
        for text in [p["a"] for p in pairs[:200]]:
            encoder.encode([text])
        single_ms = (time.perf_counter() - t0) / 200 * 1000
        curves = {
            "qqp": pair_curve(sims, labels),
            "qqp_math": pair_curve(sims[math_mask], labels[math_mask]),
            "code_nearest_distinct": distinct_curve(nearest_distinct(embeddings.encode_many(encoder, code))),
            "chat_nearest_distinct": distinct_curve(nearest_distinct(embeddings.encode_many(encoder, chat))),
        }
        best_f1 = max(curves["qqp"], key=lambda r: 2 * r["precision"] * r["recall"] / max(r["precision"] + r["recall"], 1e-9))
        result["encoders"][name] = {
            "encode_seconds_batched": encode_s, "single_query_ms": single_ms,
            "curves": curves, "qqp_best_f1_threshold": best_f1["threshold"],
            "picked": {
                "code": pick(curves["code_nearest_distinct"]),
                "chat": pick(curves["chat_nearest_distinct"]),
                "factual_qqp_false_hit_10pct": pick(curves["qqp"], limit=0.10),
                "math_qqp_false_hit_10pct": pick(curves["qqp_math"], limit=0.10),
            },
        }
        print(name, json.dumps(result["encoders"][name]["picked"]), f"single query {single_ms:.2f} ms")
    if len(qqp_sims) == 2:
        x, y = qqp_sims.values()
        result["encoder_agreement"] = {"pearson": float(np.corrcoef(x, y)[0, 1]),
                                       "max_abs_diff": float(np.abs(x - y).max()),
                                       "mean_abs_diff": float(np.abs(x - y).mean())}
        print("encoder agreement", result["encoder_agreement"])
    (out / "threshold_study.json").write_text(json.dumps(result, indent=1))
    plot(result, out / "threshold_study.png")


def plot(result: dict, path: Path) -> None:
    fig, axes = plotting.subplots(1, 2, figsize=(13, 5))
    for name, enc in result["encoders"].items():
        style = "-" if "int8" in name else "--"
        q = enc["curves"]["qqp"]
        t = [r["threshold"] for r in q]
        axes[0].plot(t, [r["precision"] for r in q], style, label=f"QQP precision ({name})")
        axes[0].plot(t, [r["recall"] for r in q], style, label=f"QQP recall ({name})")
        axes[0].plot(t, [r["precision"] for r in enc["curves"]["qqp_math"]], style, label=f"QQP math precision ({name})")
        for cat in ("code", "chat"):
            c = enc["curves"][f"{cat}_nearest_distinct"]
            axes[1].plot(t, [r["false_hit_share"] for r in c], style, label=f"{cat} ({name})")
        axes[1].plot(t, [r["false_hit_share"] for r in q], style, label=f"QQP ({name})")
    axes[0].set(xlabel="similarity threshold", ylabel="share", title=f"QQP, {result['pairs']} labelled pairs")
    axes[1].set(xlabel="similarity threshold", ylabel="false-hit share", yscale="log",
                title="false hits: nearest distinct prompt (code, chat) / QQP")
    axes[1].axhline(result["max_false_hit"], color="grey", lw=0.8)
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
