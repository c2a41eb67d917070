"""Train the learned verifier: ``python -m controller.verify train`` (see ``make verifier``).

Reads the training split of ``bench.hard_negatives`` (QQP-sourced pairs only by default: the
held-back split and the chat/code sources stay unseen), encodes each pair with the hot-path
encoder, fits the logistic regression and writes ``controller/verify/learned.json``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np

from controller import embeddings
from controller.verify import calibrate
from controller.verify.learned import WEIGHTS, features, fit

DEFAULT_PAIRS = Path("bench/results/hard_negatives/train.jsonl.gz")


def train(pairs: Path, out: Path, sources: set[str], encoder_name: str, l2: float) -> dict:
    if not pairs.exists():
        raise SystemExit(f"{pairs} not found: generate it with `python -m bench.hard_negatives`")
    records = calibrate.read_pairs(pairs)
    if any(r.get("split", "train") != "train" for r in records):
        raise SystemExit(f"{pairs} holds held-back pairs: train on the training split only")
    sims = calibrate.similarities(records, embeddings.load(encoder_name), cache=pairs)  # all: shared cache
    keep = [i for i, r in enumerate(records) if not sources or r["source"] in sources]
    records, sims = [records[i] for i in keep], sims[keep]
    x = np.array([features(r["query"], r["stored"], float(s)) for r, s in zip(records, sims)])
    y = np.array([r["label"] for r in records], dtype=float)
    model = fit(x, y, l2=l2)
    meta = {"pairs": str(pairs), "pairs_sha256": hashlib.sha256(pairs.read_bytes()).hexdigest()[:16],
            "sources": sorted(sources), "records": len(records), "positives": int(y.sum()),
            "encoder": encoder_name, "l2": l2,
            "train_accuracy": float(((model.prob(x) >= 0.5) == (y == 1)).mean())}
    model = type(model)(model.mean, model.scale, model.coef, model.bias, meta)
    out.write_text(json.dumps(model.to_json(), indent=1) + "\n")
    return meta


def add_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pairs", type=Path, default=DEFAULT_PAIRS, help="training split (default: %(default)s)")
    p.add_argument("--out", type=Path, default=WEIGHTS, help="weights file (default: the shipped one)")
    p.add_argument("--sources", default="qqp", help="comma-separated record sources to train on ('' = all)")
    p.add_argument("--encoder", default=embeddings.OnnxMiniLM.name)
    p.add_argument("--l2", type=float, default=1.0)


def run(args: argparse.Namespace) -> int:
    meta = train(args.pairs, args.out, {s for s in args.sources.split(",") if s}, args.encoder, args.l2)
    print(json.dumps(meta, indent=1))
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m controller.verify", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    add_options(sub.add_parser("train", help="fit the learned verifier on the training split"))
    raise SystemExit(run(parser.parse_args()))


if __name__ == "__main__":
    main()
