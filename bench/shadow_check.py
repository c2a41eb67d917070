"""The online shadow check tightening a deliberately loose category by itself.

    python -m bench.hard_negatives && python -m bench.shadow_check [--pairs 1200] [--threshold 0.8]

One category, cosine alone at a loose `--threshold` (no verifier), `max_false_hit_rate: 0.01`,
`shadow.fraction` of hits re-asked. Traffic: held-back pairs of bench.hard_negatives (stored
question first, then the pair's query), through a real controller process (`adaptive-controller
serve`, embedded Redis) in front of bench.sim_backend run as an oracle: equivalent questions get
one answer (`--answers`: a paraphrase or near-repeat answers as its stored question, a hard
negative as itself). Ground truth per served hit: was it the answer the backend gives to that
question? Plotted over requests: the controller's own estimate (since its last change) and
upper limit from /metrics, the true false-hit rate of recent hits, and the threshold in force.
Writes shadow_check.json and shadow_check.png (`--replot` redraws the PNG from the JSON).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

from bench import plotting
from bench.hard_negatives import read
from controller.procs import free_port, stop_group, wait_http

METRICS = ("adaptive_shadow_checks", "adaptive_shadow_false_hits", "adaptive_shadow_false_hit_rate",
           "adaptive_shadow_false_hit_upper", "adaptive_shadow_threshold_offset")


def policy(threshold: float, fraction: float, bound: float, verifier: str, min_score: float) -> str:
    return (f"default_category: qa\ncategories:\n  - name: qa\n    policy: {{similarity_threshold: {threshold}, "
            f"max_false_hit_rate: {bound}, ttl_seconds: 86400, max_entries: 100000, "
            f"verifier: {{name: {verifier}, min_score: {min_score}}}, shadow: {{fraction: {fraction}}}}}\n")


def scrape(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", timeout=30).text
    out = {}
    for name in METRICS:
        m = re.search(rf'^{name}\{{category="qa"\}} (\S+)$', text, re.M)
        out[name] = float(m.group(1)) if m else 0.0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=1200, help="held-back pairs replayed (seeded sample)")
    parser.add_argument("--threshold", type=float, default=0.8, help="the deliberately loose starting threshold")
    parser.add_argument("--fraction", type=float, default=0.5, help="shadow.fraction")
    parser.add_argument("--bound", type=float, default=0.01)
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--verifier", default="threshold", help="verifier of the category (default: none)")
    parser.add_argument("--min-score", type=float, default=1.0)
    parser.add_argument("--tag", default="", help="suffix of the output files")
    parser.add_argument("--replot", action="store_true")
    args = parser.parse_args()
    if args.replot:
        name = f"shadow_check{args.tag}"
        plot(json.loads((Path(args.out) / f"{name}.json").read_text()), Path(args.out) / f"{name}.png")
        return
    records = [r for r in read(Path("bench/results/hard_negatives/heldback.jsonl.gz")) if r["category"] != "chat"]
    records = random.Random(0).sample(records, min(args.pairs, len(records)))
    answers: dict[str, str] = {}
    for r in records:
        answers.setdefault(r["stored"], r["stored"])
        answers.setdefault(r["query"], r["stored"] if r["label"] else r["query"])
    rows, truth = [], []
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "answers.json").write_text(json.dumps(answers))
        (Path(tmp) / "policy.yaml").write_text(policy(args.threshold, args.fraction, args.bound, args.verifier, args.min_score))
        be_port, ctl_port = free_port(), free_port()
        backend = subprocess.Popen([sys.executable, "-m", "bench.sim_backend", "--port", str(be_port), "--slots", "64",
                                    "--service-seconds", "0", "--answers", str(Path(tmp) / "answers.json")],
                                   start_new_session=True)
        ctl = subprocess.Popen([sys.executable, "-m", "controller.cli", "serve", "--config", str(Path(tmp) / "policy.yaml"),
                                "--backend", f"http://127.0.0.1:{be_port}", "--port", str(ctl_port),
                                "--data-dir", str(Path(tmp) / "redis")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        url = f"http://127.0.0.1:{ctl_port}"
        try:
            assert wait_http(f"http://127.0.0.1:{be_port}/health", backend, 60) and wait_http(url + "/health", ctl, 180)
            with httpx.Client(timeout=60) as client:
                def ask(text: str) -> httpx.Response:
                    return client.post(url + "/v1/chat/completions", json={
                        "model": "sim", "temperature": 0, "max_tokens": 16,
                        "messages": [{"role": "user", "content": text}]})

                for i, r in enumerate(records):
                    for text in (r["stored"], r["query"]):
                        reply = ask(text)
                        if reply.headers.get("x-cache") == "HIT":
                            served = reply.json()["choices"][0]["message"]["content"]
                            truth.append(served != f"ANSWER: {answers.get(text, text)}")
                    if i % 25 == 24:
                        m = scrape(url)
                        recent = truth[-200:]
                        rows.append({"pairs": i + 1, "hits": len(truth), "true_false_hit_rate_recent":
                                     sum(recent) / len(recent) if recent else 0.0,
                                     "threshold": min(0.999, args.threshold + m["adaptive_shadow_threshold_offset"]), **m})
                        print(json.dumps(rows[-1]), flush=True)
        finally:
            stop_group(ctl)
            stop_group(backend)
    out = Path(args.out)
    result = {"pairs": len(records), "start_threshold": args.threshold, "fraction": args.fraction,
              "verifier": args.verifier, "min_score": args.min_score,
              "bound": args.bound, "hits": len(truth), "true_false_hits": sum(truth), "rows": rows}
    (out / f"shadow_check{args.tag}.json").write_text(json.dumps(result, indent=1))
    plot(result, out / f"shadow_check{args.tag}.png")


def plot(result: dict, path: Path) -> None:
    fig, ax = plotting.subplots(figsize=(9, 5))
    rows = result["rows"]
    x = [r["pairs"] for r in rows]
    ax.plot(x, [r["adaptive_shadow_false_hits"] / max(r["adaptive_shadow_checks"], 1) for r in rows],
            label="shadow estimate, all checks so far")
    ax.plot(x, [r["adaptive_shadow_false_hit_upper"] for r in rows], "--",
            label="95 % upper limit since the last change (what the controller acts on)")
    ax.plot(x, [r["true_false_hit_rate_recent"] for r in rows], label="true share, last 200 hits")
    ax.axhline(result["bound"], color="grey", lw=0.8, label="max_false_hit_rate")
    ax.set(xlabel="pairs replayed", ylabel="wrong answers among served hits", yscale="symlog", ylim=(0, 1.05),
           title=f"shadow check, fraction {result['fraction']}, starting threshold {result['start_threshold']}, "
                 f"verifier {result.get('verifier', 'threshold')}")
    ax.set_yscale("symlog", linthresh=0.01)
    twin = ax.twinx()
    twin.plot(x, [r["threshold"] for r in rows], color="black", lw=1.2, label="threshold in force")
    twin.set_ylabel("similarity threshold")
    twin.legend(fontsize=7, loc="lower right")
    plotting.save(fig, path, [ax])


if __name__ == "__main__":
    main()
