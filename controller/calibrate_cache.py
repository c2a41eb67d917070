"""`adaptive-controller calibrate-cache`: each category's operating point from labelled pairs.

For every category with a `max_false_hit_rate`, picks the similarity threshold and verifier
setting (controller.verify.calibrate) that serve the most labelled repeats/paraphrases while
the 95 % upper limit of the false-hit rate stays within the bound, and writes them, with what
they measured, into a copy of the policy file. A category whose labelled data cannot show its
bound keeps its old setting and is reported as refused, with the reason (exit status 2).
The bound holds for all negatives together and for each "kind" of negative (negation, entity
swap, ...) that has enough pairs to show it. Pairs without a "category" are assigned one by the
policy's own classifier.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import yaml


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="configs/policies.yaml", help="policy YAML (default: %(default)s)")
    p.add_argument("--pairs", required=True, type=Path,
                   help='labelled pairs, JSON lines (.gz ok): {"stored", "query", "label", "category"?} '
                   'or QQP-style {"a", "b", "duplicate"}')
    p.add_argument("--out", type=Path, default=None,
                   help="calibrated policy file to write (default: <config>.calibrated.yaml; YAML comments "
                   "are not carried over)")
    p.add_argument("--max-false-hit-rate", type=float, default=None,
                   help="bound for categories that declare none (default: only calibrate those that do)")
    p.add_argument("--pooled", action="store_true",
                   help="bound the false-hit rate of all negatives together only, not of each kind of negative")
    p.add_argument("--encoder", default="minilm-int8-onnx", help="query embedding model (as served)")


def run(args: argparse.Namespace) -> int:
    from controller import embeddings
    from controller.classifier import Classifier
    from controller.snapshot import load_policies
    from controller.verify import calibrate
    from policies.schema import PolicyError, parse_policies

    config_path = Path(args.config)
    try:
        config = load_policies(config_path)
        records = calibrate.read_pairs(args.pairs)
    except (PolicyError, ValueError, OSError) as exc:
        print(exc, file=sys.stderr)
        return 1
    encoder = embeddings.load(args.encoder)
    missing = [r for r in records if not r.get("category")]
    if missing:
        classifier = Classifier(config, encoder, config_path.parent)
        vectors = embeddings.encode_many(encoder, [r["stored"] for r in missing])
        for r, v in zip(missing, vectors):
            r["category"] = classifier.classify(r["stored"], v)[0]
    sims = calibrate.similarities(records, encoder)
    scores = calibrate.verifier_scores(records, sims)
    repeated = calibrate.repeats(records)
    labels = np.array([r["label"] for r in records])
    cats = np.array([r["category"] for r in records])
    kinds = np.array([r["kind"] for r in records])  # the bound holds per kind of negative, too

    data = yaml.safe_load(config_path.read_text())
    refused = 0
    for raw in data["categories"]:
        name, policy = raw["name"], raw["policy"]
        bound = config.category(name).policy.max_false_hit_rate or args.max_false_hit_rate
        if bound is None:
            print(f"{name}: no max_false_hit_rate, left as is")
            continue
        mask = cats == name
        try:
            point = calibrate.calibrate(sims[mask], labels[mask], {k: v[mask] for k, v in scores.items()}, bound,
                                        kinds=None if args.pooled else kinds[mask], repeated=repeated[mask])
        except calibrate.Refusal as exc:
            refused += 1
            print(f"{name}: REFUSED (max_false_hit_rate {bound}, {int(mask.sum())} labelled pairs): {exc}",
                  file=sys.stderr)
            continue
        policy["max_false_hit_rate"] = bound
        policy["similarity_threshold"] = point.threshold
        policy["verifier"] = {**(policy.get("verifier") or {}), "name": point.verifier, "min_score": point.min_score,
                              "measured": {**point.measured(), "pairs": str(args.pairs)}}
        floor = (policy.get("load") or {}).get("threshold_floor")
        if floor is not None and floor > point.threshold:
            policy["load"]["threshold_floor"] = point.threshold  # never relax past the calibrated point
        print(f"{name}: threshold {point.threshold} verifier {point.verifier} min_score {point.min_score}: "
              f"recall {point.recall:.3f} precision {point.precision:.3f} false hits {point.false_hit_rate:.4f} "
              f"(95 % upper {point.false_hit_upper:.4f} <= {bound}) on {point.positives}+{point.negatives} pairs")
    out = args.out or config_path.with_name(config_path.stem + ".calibrated.yaml")
    text = yaml.safe_dump(data, sort_keys=False, width=110)
    parse_policies(text, str(out))  # what we write must load
    out.write_text(f"# calibrated by `adaptive-controller calibrate-cache --pairs {args.pairs}` from {config_path}\n"
                   + text)
    print(f"wrote {out}")
    return 2 if refused else 0
