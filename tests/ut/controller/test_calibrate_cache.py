"""`adaptive-controller calibrate-cache` on real labelled pairs with the real encoder: the
operating point it writes holds in a real cache (Redis), and a category whose labelled data
cannot show its bound is refused with the reason."""

from __future__ import annotations

import gzip
import json
import random

import numpy as np
import yaml

from bench import hard_negatives as hn
from controller.cache import SemanticCache
from controller.cli import main
from controller.verify import calibrate
from policies.schema import parse_policies

POLICY = """\
default_category: qa
categories:
  - name: qa
    policy: {similarity_threshold: 0.9, max_false_hit_rate: 0.05, ttl_seconds: 60, max_entries: 1000}
  - name: chat
    examples: ["Hi, how are you?"]
    policy: {similarity_threshold: 0.85, max_false_hit_rate: 0.001, ttl_seconds: 60, max_entries: 1000,
             load: {threshold_floor: 0.8}}
"""


def labelled_pairs() -> list[dict]:
    """QQP questions with generated edits (negatives) and near-repeats, plus labelled QQP pairs."""
    rng = random.Random(3)
    pairs = hn.data.qqp_pairs(limit=400, seed=7)
    out = []
    for p in pairs[:80]:
        q = p["a"].strip()
        out.append({"stored": q, "query": hn.near_repeat(q, rng), "label": True, "category": "qa"})
        for edit in (hn.negate, hn.change_number, hn.change_comparison, hn.change_scope):
            neg = edit(q, rng)
            if neg and neg != q:
                out.append({"stored": q, "query": neg, "label": False, "category": "qa"})
    for p in pairs[120:220]:
        out.append({"stored": p["a"], "query": p["b"], "label": p["duplicate"], "category": "qa"})
    for p in pairs[220:260]:  # too few for a 0.1 % bound
        out.append({"stored": p["a"], "query": p["b"], "label": p["duplicate"], "category": "chat"})
    return out


async def test_calibrate_writes_an_operating_point_that_holds_in_the_cache(tmp_path, encoder, redis_client, capsys):
    records = labelled_pairs()
    pairs = tmp_path / "pairs.jsonl.gz"
    with gzip.open(pairs, "wt") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in records)
    config = tmp_path / "policies.yaml"
    config.write_text(POLICY)
    out = tmp_path / "calibrated.yaml"

    rc = main(["calibrate-cache", "--config", str(config), "--pairs", str(pairs), "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 2  # one category refused
    assert "chat: REFUSED" in captured.err and "needs >= 2995" in captured.err
    calibrated = parse_policies(out.read_text(), str(out))
    chat = calibrated.category("chat").policy
    assert chat.similarity_threshold == 0.85 and chat.verifier.measured is None  # left as it was
    qa = calibrated.category("qa").policy
    m = qa.verifier.measured
    assert m is not None and m.false_hit_upper <= 0.05 and m.recall > 0 and m.pairs == str(pairs)
    qa_records = [r for r in records if r["category"] == "qa"]
    assert m.positives == sum(r["label"] for r in qa_records)
    assert m.negatives == sum(not r["label"] for r in qa_records)
    assert yaml.safe_load(out.read_text())["categories"][0]["policy"]["verifier"]["name"] == qa.verifier.name

    # The written point, applied by the real cache: each pair in its own partition, so every
    # lookup sees exactly its stored question.
    cache = SemanticCache(redis_client, calibrated, encoder.dim)
    vectors = calibrate.encode_texts((t for r in qa_records for t in (r["stored"], r["query"])), encoder)
    hits = np.zeros(len(qa_records), bool)
    for i, r in enumerate(qa_records):
        await cache.store("qa", f"p{i}", "t", vectors[r["stored"]], r["stored"], {"choices": []}, 60, {})
        hits[i] = await cache.lookup("qa", f"p{i}", vectors[r["query"]], qa.similarity_threshold,
                                     query=r["query"], verifier=qa.verifier) is not None
    labels = np.array([r["label"] for r in qa_records])
    # the index's float32 cosine may round a pair at the threshold's edge the other way
    assert abs(int((hits & ~labels).sum()) - round(m.false_hit_rate * m.negatives)) <= 1
    assert abs(int((hits & labels).sum()) - round(m.recall * m.positives)) <= 1


def test_bad_pairs_file_is_a_clear_error(tmp_path, capsys):
    pairs = tmp_path / "bad.jsonl"
    pairs.write_text('{"stored": "a", "query": "b", "label": true}\n{"stored": "a", "query": 3, "label": true}\n')
    config = tmp_path / "p.yaml"
    config.write_text(POLICY)
    assert main(["calibrate-cache", "--config", str(config), "--pairs", str(pairs)]) == 1
    assert f"{pairs}:2: needs string 'stored' and 'query'" in capsys.readouterr().err
