"""Training and held-back evaluation of the category classifier (numpy only, off the hot path).

    adaptive-controller train-classifier --data bench/data/categories.jsonl \
        --policy configs/policies.yaml --out configs/classifier.npz

Data: JSONL, one {"text": ..., "category": ..., "split": "train"|"test"} a line (`split` optional:
rows without one are held back by a hash of their text, HOLDOUT_SHARE of them, so the split is
the same on every run). The regularisation strength is chosen by cross-validation on the
training rows only; the held-back rows are used once, for the report stored in the weights.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from controller.classifier import LinearModel, for_policy, load_model, route, strictness
from controller.embeddings import DIM, ENCODERS, Encoder, encode_many
from policies.schema import PolicyConfig, PolicyError

HOLDOUT_SHARE = 0.2
L2_GRID = (1e-5, 1e-4, 1e-3, 1e-2)
FOLDS = 4
SEED = 0


@dataclass(frozen=True)
class Row:
    """One labelled query."""

    text: str
    category: str
    test: bool


def _hash_holdout(text: str) -> bool:
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < HOLDOUT_SHARE


def read_rows(path: Path) -> list[Row]:
    """Labelled rows of a JSONL file; a bad line raises ValueError naming file and line."""
    rows = []
    with path.open() as fh:
        for number, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as exc:
                raise ValueError(f"{path}:{number}: not JSON ({exc})") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{path}:{number}: expected an object with 'text' and 'category'")
            text, category, split = obj.get("text"), obj.get("category"), obj.get("split")
            if not (isinstance(text, str) and text.strip()):
                raise ValueError(f"{path}:{number}: text: must be a non-empty string")
            if not (isinstance(category, str) and category):
                raise ValueError(f"{path}:{number}: category: must be a non-empty string")
            if split not in (None, "train", "test"):
                raise ValueError(f"{path}:{number}: split: must be 'train' or 'test', not {split!r}")
            rows.append(Row(text, category, _hash_holdout(text) if split is None else split == "test"))
    return rows


def _softmax(logits: np.ndarray) -> np.ndarray:
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def fit(x: np.ndarray, y: np.ndarray, k: int, l2: float, max_iter: int = 500,
        tol: float = 1e-5) -> tuple[np.ndarray, np.ndarray]:
    """Class-balanced multinomial logistic regression, L2 on the weights (not the bias).

    Balanced: each category weighs the same in the loss, whatever its row count, so a small
    category is not traded away. Solved with L-BFGS (deterministic, numpy only).
    """
    n, d = x.shape
    xb = np.hstack([x.astype(np.float64), np.ones((n, 1))])
    counts = np.bincount(y, minlength=k)
    sw = ((1.0 / np.maximum(counts, 1))[y] / np.count_nonzero(counts))[:, None]
    onehot = np.eye(k)[y]
    reg = np.r_[np.full(d, l2), 0.0][:, None]

    def loss_grad(flat: np.ndarray) -> tuple[float, np.ndarray]:
        theta = flat.reshape(d + 1, k)
        logits = xb @ theta
        logits -= logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(logits).sum(axis=1, keepdims=True))
        loss = -float((sw * onehot * (logits - log_z)).sum()) + 0.5 * float((reg * theta * theta).sum())
        grad = xb.T @ ((np.exp(logits - log_z) - onehot) * sw) + reg * theta
        return loss, grad.ravel()

    theta = _lbfgs(loss_grad, np.zeros((d + 1) * k), max_iter, tol).reshape(d + 1, k)
    return theta[:-1].T.astype(np.float32), theta[-1].astype(np.float32)


def _lbfgs(loss_grad, theta: np.ndarray, max_iter: int, tol: float, memory: int = 10) -> np.ndarray:
    """Minimise a smooth convex function: L-BFGS directions, backtracking (Armijo) steps."""
    f, g = loss_grad(theta)
    steps: list[tuple[np.ndarray, np.ndarray]] = []
    for _ in range(max_iter):
        if np.abs(g).max() < tol:
            break
        q, alphas = g.copy(), []
        for s, yv in reversed(steps):
            a = (s @ q) / (yv @ s)
            q -= a * yv
            alphas.append(a)
        if steps:
            s, yv = steps[-1]
            q *= (s @ yv) / (yv @ yv)
        for (s, yv), a in zip(steps, reversed(alphas)):
            q += (a - (yv @ q) / (yv @ s)) * s
        direction = -q
        slope = g @ direction
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            direction, slope, steps = -g, -(g @ g), []
        step = 1.0
        while True:
            new = theta + step * direction
            f_new, g_new = loss_grad(new)
            if f_new <= f + 1e-4 * step * slope or step < 1e-12:
                break
            step /= 2
        s, yv = new - theta, g_new - g
        if s @ yv > 1e-12:
            steps = (steps + [(s, yv)])[-memory:]
        theta, f, g = new, f_new, g_new
    return theta


def _balanced_accuracy(y: np.ndarray, pred: np.ndarray, k: int) -> float:
    recalls = [float((pred[y == c] == c).mean()) for c in range(k) if (y == c).any()]
    return float(np.mean(recalls))


def choose_l2(x: np.ndarray, y: np.ndarray, k: int, grid: tuple[float, ...] = L2_GRID,
              folds: int = FOLDS) -> tuple[float, dict[str, float]]:
    """The L2 strength with the best cross-validated balanced accuracy (training rows only)."""
    fold = np.random.default_rng(SEED).permutation(len(y)) % folds
    scores = {}
    for l2 in grid:
        accs = []
        for f in range(folds):
            w, b = fit(x[fold != f], y[fold != f], k, l2)
            accs.append(_balanced_accuracy(y[fold == f], np.argmax(x[fold == f] @ w.T + b, axis=1), k))
        scores[f"{l2:g}"] = float(np.mean(accs))
    best = max(grid, key=lambda l2: scores[f"{l2:g}"])
    return best, scores


def report(y: np.ndarray, pred: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Per-category precision / recall / support, accuracy and the confusion matrix.

    `pred` may use index len(names) for a category the model does not predict (the default,
    chosen for a low-confidence query); it then gets a confusion column.
    """
    k = len(names)
    cols = k + int((pred == k).any())
    confusion = np.zeros((k, cols), dtype=int)
    np.add.at(confusion, (y, pred), 1)
    per = {}
    for c, name in enumerate(names):
        tp, predicted, actual = confusion[c, c], confusion[:, c].sum(), confusion[c].sum()
        per[name] = {"precision": float(tp / predicted) if predicted else None,
                     "recall": float(tp / actual) if actual else None, "support": int(actual)}
    return {"accuracy": float((pred == y).mean()) if len(y) else None, "per_category": per,
            "confusion": confusion.tolist(), "columns": names + ["(other)"] * (cols - k)}


def held_back(model: LinearModel, floor: float, config: PolicyConfig) -> dict[str, Any]:
    """The stored held-back report of `model` routed as served under `floor` (keyword rules excluded)."""
    names = list(model.categories)
    strict = strictness(config)
    got = [route(p, names, floor, config.default_category, strict).category for p in model.test_probs]
    out = report(model.test_labels, np.array([names.index(g) if g in names else len(names) for g in got]), names)
    out["low_confidence_share"] = float((model.test_probs.max(axis=1) < floor).mean()) if len(got) else None
    return out


def examples_digest(policy: PolicyConfig | None) -> str:
    """Fingerprint of the policy's YAML examples (to tell when the weights no longer include them)."""
    pairs = sorted((c.name, e) for c in policy.categories for e in c.examples) if policy else []
    return hashlib.sha256(json.dumps(pairs).encode()).hexdigest()[:16]


def train(rows: list[Row], encoder: Encoder, policy: PolicyConfig | None = None,
          l2: float | None = None, source: str = "") -> LinearModel:
    """Fit on the training rows (plus the policy's YAML examples), report on the held-back rows."""
    examples = [Row(e, c.name, False) for c in policy.categories for e in c.examples] if policy else []
    rows = rows + examples
    names = sorted({r.category for r in rows})
    if policy is not None:
        unknown = sorted(set(names) - {c.name for c in policy.categories})
        if unknown:
            raise ValueError(f"categories not in the policy: {', '.join(unknown)}")
    train_rows = [r for r in rows if not r.test]
    test_rows = [r for r in rows if r.test]
    missing = sorted(set(names) - {r.category for r in train_rows})
    if len(names) < 2 or missing:
        raise ValueError(f"need training rows for at least two categories; none for: {', '.join(missing) or '-'}")
    index = {n: i for i, n in enumerate(names)}
    x = encode_many(encoder, [r.text for r in train_rows])
    y = np.array([index[r.category] for r in train_rows])
    cv: dict[str, float] = {}
    if l2 is None:
        l2, cv = choose_l2(x, y, len(names))
    w, b = fit(x, y, len(names), l2)
    model = LinearModel(tuple(names), w, b)
    probs = (model.probabilities(encode_many(encoder, [r.text for r in test_rows])) if test_rows
             else np.zeros((0, len(names)), np.float32))
    labels = np.array([index[r.category] for r in test_rows], dtype=np.int64)
    meta = {
        "encoder": encoder.name, "l2": l2, "cv_balanced_accuracy": cv, "data": source,
        "train_rows": len(train_rows), "test_rows": len(test_rows), "policy_examples": len(examples),
        "examples_digest": examples_digest(policy),
        "train_counts": {n: int((y == i).sum()) for n, i in index.items()},
    }
    return LinearModel(tuple(names), w, b, meta, probs.astype(np.float32), labels)


def format_report(rep: dict[str, Any]) -> str:
    """A per-category precision / recall table."""
    def pct(v: float | None) -> str:
        return "   -  " if v is None else f"{100 * v:5.1f}%"

    lines = [f"  {'category':15s} precision  recall  support"]
    for name, m in rep["per_category"].items():
        lines.append(f"  {name:15s} {pct(m['precision'])}   {pct(m['recall'])}  {m['support']:7d}")
    acc = rep["accuracy"]
    lines.append(f"  accuracy {pct(acc)}" + (
        f", below the confidence floor {pct(rep['low_confidence_share'])}"
        if rep.get("low_confidence_share") is not None else ""))
    return "\n".join(lines)


def describe(config: PolicyConfig, base_dir: Path) -> str:
    """What `adaptive-controller check` says about the policy's classifier (ClassifierError if unusable)."""
    settings = config.classifier
    assert settings is not None
    path = base_dir / settings.weights
    model = for_policy(load_model(path, DIM), config, path)
    meta = model.meta
    names = {c.name for c in config.categories}
    lines = [
        f"classifier: {path} ({meta.get('encoder')}, l2 {meta.get('l2')}, {meta.get('train_rows')} training rows "
        f"incl. {meta.get('policy_examples')} YAML examples, data {meta.get('data') or '?'})",
        f"held back: {meta.get('test_rows')} rows; model with confidence_floor {settings.confidence_floor} "
        f"(below it: the strictest of {config.default_category} and the two likeliest); keyword rules not applied:",
        format_report(held_back(model, settings.confidence_floor, config)),
    ]
    if meta.get("dropped_categories"):
        lines.append(f"warning: the weights know {', '.join(meta['dropped_categories'])}, which the policy lacks: "
                     "never predicted (their held-back rows are left out above); retrain")
    missing = sorted(names - set(model.categories))
    if missing:
        lines.append(f"warning: the model never predicts {', '.join(missing)} (keyword rules or the header only)")
    if meta.get("examples_digest") != examples_digest(config):
        lines.append("warning: the YAML examples changed since training; retrain with --policy to fold them in")
    return "\n".join(lines)


def add_options(p: argparse.ArgumentParser) -> None:
    """Options of `adaptive-controller train-classifier`."""
    p.add_argument("--data", type=Path, required=True, help="labelled JSONL: text, category, optional split")
    p.add_argument("--out", type=Path, required=True, help="weights file to write (.npz)")
    p.add_argument("--policy", type=Path, default=None,
                   help="policy YAML: check category names, fold its examples into the training rows")
    p.add_argument("--encoder", default="minilm-int8-onnx", choices=sorted(ENCODERS),
                   help="the encoder the controller serves with (default: %(default)s)")
    p.add_argument("--l2", type=float, default=None, help="L2 strength (default: cross-validated on the training rows)")


def run(args: argparse.Namespace) -> int:
    """Train, write the weights, print the held-back report."""
    from controller import embeddings
    from controller.snapshot import load_policies

    try:
        policy = load_policies(args.policy) if args.policy else None
        rows = read_rows(args.data)
        model = train(rows, embeddings.load(args.encoder), policy, args.l2, source=str(args.data))
    except (PolicyError, ValueError, OSError) as exc:
        print(f"train-classifier: {exc}", file=sys.stderr)
        return 1
    model.save(args.out)
    print(f"wrote {args.out}: {len(model.categories)} categories, l2 {model.meta['l2']}, "
          f"{model.meta['train_rows']} training rows; held back {model.meta['test_rows']} rows, model alone "
          "(no keyword rules, no confidence floor):")
    print(format_report(report(model.test_labels, model.test_probs.argmax(axis=1), list(model.categories))))
    return 0
