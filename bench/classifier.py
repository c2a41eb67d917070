"""Category classifier accuracy: today's centroid classifier vs the learned one, on held-back rows.

    python -m bench.classifier [--policy configs/policies.yaml] [--data bench/data/categories.jsonl]

* (a) today: keyword rules, then the nearest YAML-example centroid (>= min_category_similarity),
  else the default category; (b) the policy's learned classifier (keyword rules, then the model
  with its confidence floor); (b') the model alone (no keywords, no floor).
* Per-category precision / recall and the confusion matrix on the held-back split.
* Latency of one classification (the embedding is excluded: it is computed for the cache anyway).
* Robustness: the share of held-back queries whose category changes when wrapped in a greeting
  or thanks ("Hi! ...", "... Thanks!"), classifying the wrapped text, the unwrapped question, and
  the more confident of the two (the controller's rule); and accuracy by that rule on the rows.
* A confidence-floor sweep: share below the floor, accuracy, and the share of *loosened*
  queries: assigned a category whose policy is looser than their true one (a lower similarity
  threshold, or cacheable when the true one is not; controller.classifier.strictness). The sweep's floor is read off the
  cross-validated (out-of-fold) training predictions, never the held-back rows.
Writes classifier.json and classifier.png into --out.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

from bench import plotting
from bench.machine import cpu_flags
from controller import embeddings
from controller.classifier import Classifier, route, strictness
from controller.embeddings import Encoder
from controller.snapshot import load_policies
from controller.verify.repeat import question
from controller.train_classifier import FOLDS, SEED, fit, read_rows, report
from policies.schema import PolicyConfig
from vllm_adaptive import envs

REPO = Path(__file__).resolve().parents[1]
FLOORS = np.round(np.arange(0.0, 0.96, 0.05), 2)
# How users wrap a question they ask again (a greeting before, thanks after).
WRAPPINGS = ("Hi! {}", "Please tell me: {}", "{} Thanks!", "{} Thank you.")


def cached_encode(encoder: Encoder, texts: list[str]) -> np.ndarray:
    """`encode_many`, kept on disk by content: re-running the bench on a busy 2-core box stays cheap."""
    digest = hashlib.sha256(json.dumps([encoder.name, texts]).encode()).hexdigest()[:24]
    path = envs.home() / "bench-embeddings" / f"{digest}.npy"
    if path.exists():
        return np.load(path)
    vectors = embeddings.encode_many(encoder, texts)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, vectors)
    return vectors


def loosened_share(true: list[str], got: list[str], config: PolicyConfig) -> float:
    """Share of queries assigned a category that serves more freely than their own."""
    strict = strictness(config)
    return float(np.mean([strict[g] < strict[t] for t, g in zip(true, got)]))


def run_classifier(clf: Classifier, texts: list[str], vectors: np.ndarray) -> tuple[list[str], list[str], list[float]]:
    """Categories, sources and per-call seconds (embedding excluded)."""
    cats, sources, seconds = [], [], []
    for text, v in zip(texts, vectors):
        start = time.perf_counter()
        a = clf.assign(text, v)
        seconds.append(time.perf_counter() - start)
        cats.append(a.category)
        sources.append(a.source)
    return cats, sources, seconds


def summary(true: list[str], got: list[str], names: list[str], config: PolicyConfig,
            seconds: list[float] | None = None, sources: list[str] | None = None) -> dict:
    index = {n: i for i, n in enumerate(names)}
    out = report(np.array([index[t] for t in true]), np.array([index[g] for g in got]), names)
    out["loosened_share"] = loosened_share(true, got, config)
    if sources is not None:
        out["source_share"] = {s: sources.count(s) / len(sources) for s in sorted(set(sources))}
    if seconds is not None:
        us = sorted(1e6 * s for s in seconds)
        out["latency_us"] = {"median": statistics.median(us), "p99": us[int(0.99 * (len(us) - 1))],
                             "mean": statistics.fmean(us)}
    return out


def out_of_fold(x: np.ndarray, y: np.ndarray, k: int, l2: float) -> np.ndarray:
    """Cross-validated probabilities on the training rows (the floor is chosen on these)."""
    fold = np.random.default_rng(SEED).permutation(len(y)) % FOLDS
    probs = np.zeros((len(y), k))
    for f in range(FOLDS):
        w, b = fit(x[fold != f], y[fold != f], k, l2)
        logits = x[fold == f] @ w.T + b
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        probs[fold == f] = e / e.sum(axis=1, keepdims=True)
    return probs


def sweep(probs: np.ndarray, y: np.ndarray, names: list[str], config: PolicyConfig) -> list[dict]:
    """Accuracy, share below the floor and loosened share of the model routed as served, per floor."""
    strict = strictness(config)
    true = [names[i] for i in y]
    rows = []
    for floor in FLOORS:
        got = [route(p, names, float(floor), config.default_category, strict).category for p in probs]
        rows.append({
            "floor": float(floor), "accuracy": float(np.mean([g == t for g, t in zip(got, true)])),
            "low_confidence_share": float((probs.max(axis=1) < floor).mean()),
            "loosened_share": loosened_share(true, got, config),
        })
    return rows


def wrapped_changes(clf: Classifier, encoder: Encoder, texts: list[str], vectors: np.ndarray, got: list[str],
                    true: list[str]) -> dict:
    """Share of held-back queries whose category changes when wrapped in a greeting or thanks:
    classifying the wrapped text as sent, the question without the wrapping, and the more
    confident of the two (what the controller does: controller.plan, Parsed.topic)."""
    changed: dict[str, int] = {"as_sent": 0, "unwrapped": 0, "more_confident": 0}
    for wrapping in WRAPPINGS:
        wrapped = [wrapping.format(t[:1].lower() + t[1:] if wrapping[0] != "{" else t) for t in texts]
        unwrapped = [question(t) for t in wrapped]
        vw, vu = cached_encode(encoder, wrapped), cached_encode(encoder, unwrapped)
        readings = {"as_sent": [clf.assign(t, v) for t, v in zip(wrapped, vw)],
                    "unwrapped": [clf.assign(t, v) for t, v in zip(unwrapped, vu)],
                    "more_confident": [clf.most_confident([(t, v), (u, w)])
                                       for t, v, u, w in zip(wrapped, vw, unwrapped, vu)]}
        for label, assigned in readings.items():
            changed[label] += sum(a.category != b for a, b in zip(assigned, got))
    total = len(WRAPPINGS) * len(texts)
    unwrapped = [question(t) for t in texts]
    by_rule = [clf.most_confident([(t, v), (u, w)]).category for t, v, u, w in
               zip(texts, vectors, unwrapped, cached_encode(encoder, unwrapped))]
    return {"wrappings": list(WRAPPINGS), "queries": total,
            "accuracy_more_confident": float(np.mean([a == b for a, b in zip(by_rule, true)])),
            **{label: {"changed": n, "share": n / total} for label, n in changed.items()}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policy", type=Path, default=REPO / "configs" / "policies.yaml")
    parser.add_argument("--data", type=Path, default=REPO / "bench" / "data" / "categories.jsonl")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    args = parser.parse_args(argv)

    config = load_policies(args.policy)
    if config.classifier is None:
        raise SystemExit(f"{args.policy} has no classifier section: nothing to compare against")
    encoder = embeddings.load()
    learned = Classifier(config, encoder, args.policy.parent)
    assert learned.model is not None
    today = Classifier(config.model_copy(update={"classifier": None}), encoder)
    rows = read_rows(args.data)
    test = [r for r in rows if r.test]
    train = [r for r in rows if not r.test]
    names = list(learned.model.categories)
    texts, true = [r.text for r in test], [r.category for r in test]
    vectors = cached_encode(encoder, texts)

    results: dict = {
        "policy": str(args.policy.relative_to(REPO)), "data": str(args.data.relative_to(REPO)),
        "encoder": encoder.name, "held_back_rows": len(test), "train_rows": len(train),
        "confidence_floor": learned.floor, "weights_meta": learned.model.meta,
        "cpu": platform.processor() or platform.machine(), "cpu_flags": cpu_flags(),
    }
    for label, clf in (("today_centroid", today), ("learned", learned)):
        run_classifier(clf, texts[:50], vectors[:50])  # warm-up
        got, sources, seconds = run_classifier(clf, texts, vectors)
        results[label] = summary(true, got, names, config, seconds, sources)
        if label == "learned":
            results["wrapped"] = wrapped_changes(clf, encoder, texts, vectors, got, true)
    start = time.perf_counter()
    probs = learned.model.probabilities(vectors)
    model_only = [names[i] for i in probs.argmax(axis=1)]
    results["model_only"] = summary(true, model_only, names, config)
    results["model_only"]["batch_us_per_query"] = 1e6 * (time.perf_counter() - start) / len(texts)

    index = {n: i for i, n in enumerate(names)}
    x_train = cached_encode(encoder, [r.text for r in train])
    y_train = np.array([index[r.category] for r in train])
    oof = out_of_fold(x_train, y_train, len(names), float(learned.model.meta["l2"]))
    results["floor_sweep_train_cv"] = sweep(oof, y_train, names, config)
    results["floor_sweep_held_back"] = sweep(probs, np.array([index[t] for t in true]), names, config)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "classifier.json").write_text(json.dumps(results, indent=2))
    plot(results, names, args.out / "classifier.png")
    for label in ("today_centroid", "learned", "model_only"):
        r = results[label]
        print(f"{label:15s} accuracy {r['accuracy']:.3f} loosened {r['loosened_share']:.3f} "
              + " ".join(f"{n}:P{m['precision'] or 0:.2f}/R{m['recall'] or 0:.2f}" for n, m in r["per_category"].items())
              + (f" latency median {r['latency_us']['median']:.1f} us" if "latency_us" in r else ""))
    w = results["wrapped"]
    print(f"wrapped queries whose category changes: as sent {w['as_sent']['share']:.3f}, unwrapped "
          f"{w['unwrapped']['share']:.3f}, the more confident {w['more_confident']['share']:.3f} of {w['queries']}; "
          f"held-back accuracy by the more confident reading {w['accuracy_more_confident']:.3f}")
    print(f"wrote {args.out / 'classifier.json'} and classifier.png")
    return 0


def plot(results: dict, names: list[str], path: Path) -> None:
    fig, axes = plotting.subplots(1, 3, figsize=(17, 5))
    for ax, label, title in ((axes[0], "today_centroid", "today: keywords + centroids"),
                             (axes[1], "learned", "learned: keywords + model + floor")):
        m = np.array(results[label]["confusion"], dtype=float)
        ax.imshow(m / np.maximum(m.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, int(v), ha="center", va="center", fontsize=8)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_xlabel("assigned")
        ax.set_ylabel("true (held back)")
        ax.set_title(f"{title}\naccuracy {results[label]['accuracy']:.3f}", fontsize=9)
    ax = axes[2]
    for key, style in (("floor_sweep_train_cv", "--"), ("floor_sweep_held_back", "-")):
        rows = results[key]
        floors = [r["floor"] for r in rows]
        tag = "train CV" if "train" in key else "held back"
        ax.plot(floors, [r["accuracy"] for r in rows], style, color="C0", label=f"accuracy ({tag})")
        ax.plot(floors, [r["low_confidence_share"] for r in rows], style, color="C1", label=f"below floor ({tag})")
        ax.plot(floors, [r["loosened_share"] for r in rows], style, color="C3", label=f"loosened ({tag})")
    ax.axvline(results["confidence_floor"], color="grey", lw=0.8)
    ax.set_xlabel("confidence floor (model alone, no keyword rules)")
    ax.set_title("confidence floor sweep", fontsize=9)
    plotting.save(fig, path, axes=[axes[2]])


if __name__ == "__main__":
    raise SystemExit(main())
