"""Verified hits vs threshold-only hits on the held-back hard-negative split.

    python -m bench.hard_negatives && python -m bench.verified_cache [--bound 0.01]

Three settings, each judged on held-back (stored, query) pairs it never saw, per category
and overall: hit rate on paraphrases and near-repeats, false-hit rate per hard-negative kind.

* (a) today: the per-category thresholds configs/policies.yaml had before verification, cosine alone;
* (b) threshold-only at the best global value: the one threshold (all categories) with the
  highest training hit rate whose false-hit upper limit on training negatives is within the bound;
* (c) verified: per category, the operating point `calibrate-cache` picks on the training
  split (threshold + verifier + min_score, bound on the 95 % upper limit of the false-hit rate
  of each kind of negative with enough pairs: "verified"; of all negatives pooled: "verified_pooled"),
  plus repeats (controller.verify.repeat) served at any similarity, as the controller does.

Also the verifiers' own cost per candidate. Writes verified_cache.json and verified_cache.png.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from bench import plotting
from bench.machine import cpu_flags
from bench.hard_negatives import CATEGORIES, NEGATIVE_KINDS, POSITIVE_KINDS
from controller import embeddings, verify
from controller.verify import calibrate

PAIRS = Path("bench/results/hard_negatives")
# configs/policies.yaml's thresholds before verified hits (commit 6c4eff6), the baseline of issue 11
TODAY = "code=0.95,math=0.99,factual=0.96,time_sensitive=0.99,chat=0.83"
COSINE_ONLY = ("today", "threshold_global")  # the settings of a plain similarity cache


def report(accept: np.ndarray, records: list[dict]) -> dict:
    """Hit rates per positive kind and false-hit rates per negative kind, per category and overall."""
    kinds = np.array([r["kind"] for r in records])
    cats = np.array([r["category"] for r in records])
    out = {}
    for cat in (*CATEGORIES, "overall"):
        mask = np.ones(len(records), bool) if cat == "overall" else cats == cat
        row: dict = {}
        for kind in (*POSITIVE_KINDS, *NEGATIVE_KINDS):
            sel = mask & (kinds == kind)
            if sel.any():
                row[kind] = {"n": int(sel.sum()), "rate": float(accept[sel].mean())}
        pos = mask & np.isin(kinds, POSITIVE_KINDS)
        neg = mask & np.isin(kinds, NEGATIVE_KINDS)
        fp = int(accept[neg].sum())
        row["positive_hit_rate"] = float(accept[pos].mean()) if pos.any() else None
        row["false_hit_rate"] = float(accept[neg].mean()) if neg.any() else None
        row["false_hit_upper"] = calibrate.upper_bound(fp, int(neg.sum())) if neg.any() else None
        served = int(accept[pos].sum()) + fp
        row["wrong_share_of_served"] = fp / served if served else 0.0
        out[cat] = row
    return out


# records, cosine, labels, verifier scores, which pairs are repeats (served at any similarity when verified)
Split = tuple[list[dict], np.ndarray, np.ndarray, dict[str, np.ndarray], np.ndarray]


def load_splits(encoder) -> dict[str, Split]:
    """The generated train and held-back pairs (bench.hard_negatives) with their similarities and
    every verifier's scores."""
    data = {}
    for split in ("train", "heldback"):
        path = PAIRS / f"{split}.jsonl.gz"
        records = calibrate.read_pairs(path)
        sims = calibrate.similarities(records, encoder, cache=path)
        labels = np.array([r["label"] for r in records])
        data[split] = (records, sims, labels, calibrate.verifier_scores(records, sims), calibrate.repeats(records))
    return data


def accepted(split: Split, choose, *, verified: bool) -> np.ndarray:
    """Which pairs are served when category c uses `choose(c)` = (threshold, verifier, min_score);
    `verified`: with the verified cache's repeat rule (a cosine-only cache has none)."""
    records, sims, _, scores, repeated = split
    accept = np.zeros(len(records), bool)
    for cat in CATEGORIES:
        mask = np.array([r["category"] == cat for r in records])
        t, name, m = choose(cat)
        accept[mask] = (sims[mask] >= t) & (scores[name][mask] >= m)
    return accept | repeated if verified else accept


def global_threshold(train: Split, bound: float) -> tuple[float, str]:
    """The one cosine threshold (all categories) with the highest training hit rate whose false-hit
    upper limit on training negatives is within `bound`: what a threshold-only cache can do."""
    _, sims, labels, scores, _ = train
    try:
        chosen = calibrate.calibrate(sims, labels, {"threshold": scores["threshold"]}, bound)
        return chosen.threshold, "meets the bound on training pairs"
    except calibrate.Refusal as exc:  # cosine alone cannot: take the strictest threshold below exact repeats
        return float(calibrate.THRESHOLDS[-1]), f"refused ({exc}); strictest grid value used"


def operating_points(train: Split, bound: float, per_kind: bool = True) -> tuple[dict, dict[str, str]]:
    """Per category, the verified operating point calibrate-cache picks on the training pairs
    (bound on each kind of negative, or on all pooled), and the categories it refuses (why)."""
    records, sims, labels, scores, repeated = train
    kinds = np.array([r["kind"] for r in records])
    points, refusals = {}, {}
    for cat in CATEGORIES:
        mask = np.array([r["category"] == cat for r in records])
        try:
            points[cat] = calibrate.calibrate(sims[mask], labels[mask], {k: v[mask] for k, v in scores.items()},
                                              bound, kinds=kinds[mask] if per_kind else None, repeated=repeated[mask])
        except calibrate.Refusal as exc:
            refusals[cat] = str(exc)
    return points, refusals


def verifier_latency(records: list[dict], sims: np.ndarray, k: int = 4, n: int = 2000) -> dict:
    """Per-query cost of verifying k candidates (the stored texts' signatures warm, as in a cache)."""
    rng = np.random.default_rng(0)
    out = {}
    idx = rng.choice(len(records), size=min(n, len(records)), replace=False)
    for name in verify.VERIFIERS:
        v = verify.load(name)
        times = []
        for i in idx:
            cands = [(records[j]["stored"], float(sims[j])) for j in rng.choice(len(records), k)]
            for stored, _ in cands:  # stored signatures are computed once per entry, like the cache
                v.score(stored, stored, 1.0)
            t0 = time.perf_counter()
            verify.choose(v, 0.5, records[i]["query"], cands)
            times.append(time.perf_counter() - t0)
        arr = np.array(times) * 1e3
        out[name] = {"p50_ms": float(np.percentile(arr, 50)), "p99_ms": float(np.percentile(arr, 99)), "k": k}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bound", type=float, default=0.01, help="max_false_hit_rate of every category")
    parser.add_argument("--today", default=TODAY,
                        help="setting (a): category=threshold, cosine alone (default: configs/policies.yaml before "
                        "verification, %(default)s)")
    parser.add_argument("--encoder", default=embeddings.OnnxMiniLM.name)
    parser.add_argument("--out", default="bench/results")
    args = parser.parse_args()
    encoder = embeddings.load(args.encoder)
    data = load_splits(encoder)

    # (a) today's thresholds
    today = {name: float(t) for name, t in (item.split("=") for item in args.today.split(","))}
    settings = {"today": {cat: (today[cat], "threshold", 1.0) for cat in CATEGORIES}}
    # (b) one global threshold, chosen on training pairs
    tr_records, tr_sims, tr_labels, tr_scores, tr_repeated = data["train"]
    tr_kinds = np.array([r["kind"] for r in tr_records])
    global_t, global_note = global_threshold(data["train"], args.bound)
    settings["threshold_global"] = {cat: (global_t, "threshold", 1.0) for cat in CATEGORIES}
    # (c) verified, calibrated per category on training pairs: the bound on each kind of negative
    # (calibrate-cache's default), and on all negatives pooled (`--pooled`)
    points, refusals = {}, {}
    for label, per_kind in (("verified", True), ("verified_pooled", False)):
        chosen, refused = operating_points(data["train"], args.bound, per_kind)
        points |= {(label, cat): p for cat, p in chosen.items()}
        refusals |= {f"{label}/{cat}": why for cat, why in refused.items()}
        settings[label] = {cat: (p.threshold, p.verifier, p.min_score) for cat, p in chosen.items()}
    # the same calibration restricted to each single verifier (which one wins where)
    per_verifier = {}
    for name in verify.VERIFIERS:
        chosen = {}
        for cat in CATEGORIES:
            mask = np.array([r["category"] == cat for r in tr_records])
            try:
                p = calibrate.calibrate(tr_sims[mask], tr_labels[mask], {name: tr_scores[name][mask]}, args.bound,
                                        kinds=tr_kinds[mask], repeated=tr_repeated[mask])
                chosen[cat] = (p.threshold, name, p.min_score)
            except calibrate.Refusal:
                chosen[cat] = (1.01, name, 1.0)  # refused: never serve
        per_verifier[name] = chosen

    results: dict = {"bound": args.bound, "encoder": encoder.name, "cpu": platform.processor() or platform.machine(),
                     "cpu_flags": cpu_flags(), "settings": {}, "refusals": refusals,
                     "threshold_global": {"threshold": global_t, "note": global_note},
                     "calibrated": {f"{lbl}/{cat}": {"threshold": p.threshold, "verifier": p.verifier,
                                                     "min_score": p.min_score, **p.measured()}
                                    for (lbl, cat), p in points.items()}}
    for label, setting in {**settings, **{f"calibrated_{k}": v for k, v in per_verifier.items()}}.items():
        choose = setting.get
        results["settings"][label] = {
            "points": {c: list(v) for c, v in setting.items()},
            "heldback": report(accepted(data["heldback"], lambda c: choose(c, (1.01, "threshold", 1.0)),
                                        verified=label not in COSINE_ONLY), data["heldback"][0]),
        }
    results["verifier_latency"] = verifier_latency(data["heldback"][0], data["heldback"][1])
    a = results["settings"]["today"]["heldback"]["overall"]["positive_hit_rate"]
    c = results["settings"]["verified"]["heldback"]["overall"]
    results["targets"] = {"false_hits_le_bound": c["false_hit_rate"] <= args.bound,
                          "hit_rate_ratio_vs_today": c["positive_hit_rate"] / a if a else None}
    out = Path(args.out)
    (out / "verified_cache.json").write_text(json.dumps(results, indent=1))
    for label in ("today", "threshold_global", "verified", "verified_pooled"):
        o = results["settings"][label]["heldback"]["overall"]
        print(f"{label:18s} hit {o['positive_hit_rate']:.3f}  false-hit {o['false_hit_rate']:.4f} "
              f"(upper {o['false_hit_upper']:.4f})  wrong among served {o['wrong_share_of_served']:.4f}")
    print(json.dumps(results["calibrated"], indent=1), json.dumps(refusals, indent=1))
    print(json.dumps(results["verifier_latency"]))
    plot(results, out / "verified_cache.png")


def plot(results: dict, path: Path) -> None:
    fig, axes = plotting.subplots(1, 2, figsize=(14, 5))
    labels = ["today", "threshold_global", "verified", "verified_pooled"]
    cats = [*CATEGORIES, "overall"]
    width = 0.2
    for i, label in enumerate(labels):
        rep = results["settings"][label]["heldback"]
        axes[0].bar(np.arange(len(cats)) + i * width, [rep[c]["positive_hit_rate"] or 0 for c in cats], width, label=label)
        kinds = [k for k in NEGATIVE_KINDS if k in rep["overall"]]
        axes[1].bar(np.arange(len(kinds)) + i * width, [rep["overall"][k]["rate"] for k in kinds], width, label=label)
    axes[0].set_xticks(np.arange(len(cats)) + 1.5 * width, cats)
    axes[0].set(ylabel="hit rate", title="held-back paraphrases + near-repeats served")
    axes[1].set_xticks(np.arange(len(kinds)) + 1.5 * width, kinds, rotation=30)
    axes[1].axhline(results["bound"], color="grey", lw=0.8)
    axes[1].set(ylabel="false-hit rate", yscale="symlog", title="held-back hard negatives served (all categories)")
    axes[1].set_yscale("symlog", linthresh=0.01)
    plotting.save(fig, path, axes)


if __name__ == "__main__":
    main()
