"""The category classifier: training on real labelled queries, the weights file, the floor, reload."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from controller.classifier import Classifier, ClassifierError, LinearModel, load_model
from controller.train_classifier import Row, held_back, read_rows, train
from policies.schema import parse_policies

DATA = Path(__file__).resolve().parents[3] / "bench" / "data" / "categories.jsonl"
CATEGORIES = ("code", "math", "factual", "time_sensitive", "chat")

POLICY = """\
version: 1
default_category: factual
classifier: {{weights: {weights}, confidence_floor: {floor}}}
categories:
  - name: code
    keywords: [python]
    policy: {{similarity_threshold: 0.95, ttl_seconds: 60, max_entries: 10}}
  - name: math
    examples: ["What is 17 times 23?"]
    policy: {{similarity_threshold: 0.99, ttl_seconds: 60, max_entries: 10}}
  - name: factual
    policy: {{similarity_threshold: 0.96, ttl_seconds: 60, max_entries: 10}}
  - name: time_sensitive
    examples: ["What is the weather in London today?"]
    policy: {{similarity_threshold: 0.99, ttl_seconds: 60, max_entries: 10, cacheable: false}}
  - name: chat
    examples: ["Can you tell me a joke?"]
    policy: {{similarity_threshold: 0.83, ttl_seconds: 60, max_entries: 10}}
"""


def policy(weights: str = "clf.npz", floor: float = 0.0):
    return parse_policies(POLICY.format(weights=weights, floor=floor), "p.yaml")


@pytest.fixture(scope="module")
def small_set() -> list[Row]:
    """A seeded sample of the shipped labelled set: 30 training and 15 held-back rows a category."""
    rows = read_rows(DATA)
    rng = random.Random(0)
    out = []
    for cat in CATEGORIES:
        for test, n in ((False, 30), (True, 15)):
            out += rng.sample([r for r in rows if r.category == cat and r.test == test], n)
    return out


@pytest.fixture(scope="module")
def model(small_set, encoder) -> LinearModel:
    return train(small_set, encoder, policy(), l2=1e-3)


def test_training_beats_chance_on_held_back_rows(model):
    rep = held_back(model, 0.0, policy())
    assert model.categories == tuple(sorted(CATEGORIES))
    assert model.meta["test_rows"] == 75 and model.meta["policy_examples"] == 3
    assert rep["accuracy"] > 0.6  # five balanced categories: chance is 0.2
    assert all(m["support"] == 15 for m in rep["per_category"].values())


def test_weights_round_trip(model, tmp_path, encoder):
    path = tmp_path / "w.npz"
    model.save(path)
    loaded = load_model(path, encoder.dim)
    v = encoder.encode(["How do I sort a dictionary by value?"])[0]
    np.testing.assert_allclose(loaded.probabilities(v), model.probabilities(v), rtol=1e-6)
    assert loaded.meta["encoder"] == encoder.name and loaded.test_probs.shape == (75, 5)


def test_model_assigns_and_keywords_win(model, tmp_path, encoder):
    model.save(tmp_path / "clf.npz")
    clf = Classifier(policy(), encoder, tmp_path)
    text = "Will it snow in Oslo tomorrow morning?"
    assert clf.assign(text, encoder.encode([text])[0]).category == "time_sensitive"
    got = clf.assign("explain python decorators", encoder.encode(["explain python decorators"])[0])
    assert got == ("code", None, "keyword")


def test_below_the_floor_the_strictest_plausible_policy_applies(model, tmp_path, encoder):
    model.save(tmp_path / "clf.npz")
    v = encoder.encode(["Hi! How was your weekend?"])[0]
    confident = Classifier(policy(floor=0.0), encoder, tmp_path).assign("Hi! How was your weekend?", v)
    assert confident.source == "model" and confident.category == "chat"
    uncertain = Classifier(policy(floor=1.0), encoder, tmp_path).assign("Hi! How was your weekend?", v)
    # chat (0.83) is looser than the default factual (0.96): never chosen when uncertain.
    assert uncertain.source == "low_confidence" and uncertain.confidence == confident.confidence
    assert uncertain.category in ("factual", "math", "time_sensitive")


def test_uncertainty_never_loosens_below_a_likely_stricter_category(model):
    """Maths (0.99) is stricter than the default factual (0.96): a query the model finds
    maths-or-factual gets maths; one that is uncacheable-or-anything gets uncacheable."""
    from controller.classifier import route, strictness

    strict, names = strictness(policy()), model.categories
    p = np.zeros(len(names))
    p[names.index("math")], p[names.index("factual")], p[names.index("chat")] = 0.45, 0.35, 0.2
    assert route(p, names, 0.6, "factual", strict) == ("math", 0.45, "low_confidence")
    assert route(p, names, 0.4, "factual", strict) == ("math", 0.45, "model")
    p[:] = 0
    p[names.index("chat")], p[names.index("time_sensitive")], p[names.index("code")] = 0.5, 0.3, 0.2
    assert route(p, names, 0.6, "factual", strict).category == "time_sensitive"
    p[:] = 0
    p[names.index("chat")], p[names.index("code")], p[names.index("math")] = 0.5, 0.3, 0.2
    assert route(p, names, 0.6, "factual", strict).category == "factual"  # the third-likeliest is ignored


def test_floor_in_held_back_report(model):
    loose, strict = held_back(model, 0.0, policy()), held_back(model, 0.99, policy())
    assert loose["low_confidence_share"] == 0.0
    assert strict["low_confidence_share"] > 0.5
    # Most rows are uncertain: chat (the loosest) is then never chosen, the default is stricter.
    assert strict["per_category"]["chat"]["recall"] < loose["per_category"]["chat"]["recall"]


def test_reload_picks_up_new_weights(model, tmp_path, encoder):
    """A classifier is built per policy load: new weights at the same path take effect."""
    path = tmp_path / "clf.npz"
    model.save(path)
    text = "Hi! How was your weekend?"
    v = encoder.encode([text])[0]
    before = Classifier(policy(), encoder, tmp_path).assign(text, v)
    bias = np.full(len(model.categories), -50.0, np.float32)
    bias[model.categories.index("code")] = 50.0
    LinearModel(model.categories, model.weights, bias, model.meta, model.test_probs, model.test_labels).save(path)
    after = Classifier(policy(), encoder, tmp_path).assign(text, v)
    assert before.category != "code" and after.category == "code"


def _broken(tmp_path: Path, model: LinearModel, **arrays) -> Path:
    path = tmp_path / "clf.npz"
    fields = {"weights": model.weights, "bias": model.bias, "categories": np.array(model.categories),
              "meta": np.array(json.dumps({"format": 1})), "test_probs": model.test_probs,
              "test_labels": model.test_labels, **arrays}
    with path.open("wb") as fh:
        np.savez(fh, **{k: v for k, v in fields.items() if v is not None})
    return path


@pytest.mark.parametrize("arrays, message", [
    ({"weights": np.zeros((5, 10), np.float32)}, "do not fit 5 categories x 384-dim"),
    ({"bias": None}, "missing arrays bias"),
    ({"meta": np.array('{"format": 9}')}, "unsupported format 9"),
    ({"weights": np.full((5, 384), np.nan, np.float32)}, "NaN"),
    ({"categories": np.array(["code", "code", "math", "chat", "factual"])}, "distinct"),
    ({"categories": np.array("code")}, "distinct"),
    ({"meta": np.array([1.0], dtype=object)}, "not a readable .npz"),
])
def test_bad_weights_file_is_refused(model, tmp_path, encoder, arrays, message):
    _broken(tmp_path, model, **arrays)
    with pytest.raises(ClassifierError, match=message) as err:
        Classifier(policy(), encoder, tmp_path)
    assert str(tmp_path / "clf.npz") in str(err.value)


def test_missing_or_garbage_weights_refused(tmp_path, encoder):
    with pytest.raises(ClassifierError, match="no such file"):
        Classifier(policy(), encoder, tmp_path)
    (tmp_path / "clf.npz").write_text("not a zip")
    with pytest.raises(ClassifierError, match="not a readable .npz"):
        Classifier(policy(), encoder, tmp_path)


def test_weights_with_categories_the_policy_lacks(model, tmp_path, encoder):
    """A category dropped from the policy is never predicted; weights sharing < 2 categories are refused."""
    renamed = tuple("weather" if c == "time_sensitive" else c for c in model.categories)
    LinearModel(renamed, model.weights, model.bias, model.meta, model.test_probs,
                model.test_labels).save(tmp_path / "clf.npz")
    clf = Classifier(policy(), encoder, tmp_path)
    assert clf.model is not None and "weather" not in clf.model.categories
    assert clf.model.test_probs.shape == (60, 4)  # the 15 held-back weather rows are left out
    text = "Will it rain in Oslo tomorrow?"
    assert clf.assign(text, encoder.encode([text])[0]).category != "weather"
    LinearModel(("a", "b", "chat", "d", "e"), model.weights, model.bias, model.meta, model.test_probs,
                model.test_labels).save(tmp_path / "clf.npz")
    with pytest.raises(ClassifierError, match="fewer than two of its categories"):
        Classifier(policy(), encoder, tmp_path)


def test_training_data_errors_name_file_and_line(tmp_path, encoder):
    bad = tmp_path / "d.jsonl"
    bad.write_text('{"text": "hi", "category": "chat"}\n{"text": "", "category": "chat"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:2: text"):
        read_rows(bad)
    bad.write_text('{"text": "hi", "category": "chat", "split": "dev"}\n')
    with pytest.raises(ValueError, match=r"d.jsonl:1: split"):
        read_rows(bad)
    with pytest.raises(ValueError, match="not in the policy: sports"):
        train([Row("who won", "sports", False), Row("hello", "chat", False)], encoder, policy(), l2=1e-3)


def test_rows_without_split_are_held_back_by_hash(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("".join(json.dumps({"text": f"question {i}", "category": "chat"}) + "\n" for i in range(500)))
    first, second = read_rows(path), read_rows(path)
    assert [r.test for r in first] == [r.test for r in second]
    assert 0.1 < sum(r.test for r in first) / 500 < 0.3


def test_without_weights_centroids_decide(encoder):
    config = parse_policies(POLICY.replace("classifier: {{weights: {weights}, confidence_floor: {floor}}}\n", "")
                            .format(), "p.yaml")
    clf = Classifier(config, encoder)
    text = "What is 18 times 24?"
    got = clf.assign(text, encoder.encode([text])[0])
    assert got.category == "math" and got.source == "centroid"
    far = "zzzz qqqq"
    assert clf.assign(far, -encoder.encode(["What is 17 times 23?"])[0]).source == "default"


def _write_rows(path: Path, rows: list[Row]) -> None:
    path.write_text("".join(json.dumps({"text": r.text, "category": r.category,
                                        "split": "test" if r.test else "train"}) + "\n" for r in rows))


def test_train_command_then_check_reports_held_back_precision_recall(small_set, tmp_path, capsys):
    from controller.cli import main

    tiny = [r for i, r in enumerate(small_set) if i % 3 == 0]  # 10 train + 5 held back a category
    _write_rows(tmp_path / "rows.jsonl", tiny)
    pol = tmp_path / "p.yaml"
    pol.write_text(POLICY.format(weights="clf.npz", floor=0.5))
    rc = main(["train-classifier", "--data", str(tmp_path / "rows.jsonl"), "--policy", str(pol),
               "--out", str(tmp_path / "clf.npz"), "--l2", "0.001"])
    out = capsys.readouterr().out
    assert rc == 0 and "held back 25 rows" in out
    assert main(["check", str(pol)]) == 0
    out = capsys.readouterr().out
    assert "confidence_floor 0.5 (below it: the strictest of factual and the two likeliest)" in out
    for cat in CATEGORIES:
        assert re.search(rf"^  {cat} +(\d+\.\d%| +-) +\d+\.\d% +5$", out, re.M), out
    assert "YAML examples changed" not in out
    pol.write_text(POLICY.format(weights="clf.npz", floor=0.5).replace("[\"Can you tell me a joke?\"]", "[Hello there]"))
    assert main(["check", str(pol)]) == 0
    assert "YAML examples changed since training" in capsys.readouterr().out
    (tmp_path / "clf.npz").write_bytes(b"garbage")
    assert main(["check", str(pol)]) == 1
    assert "classifier.weights" in capsys.readouterr().err


async def test_served_classifier_metrics_floor_reload_and_bad_weights(
        sim_backend, start_controller, policy_copy, redis_client):
    """The example policy's shipped classifier in the real app: assignment metrics, a reload that
    raises the floor (new weights or settings take effect), and a bad weights file refused."""
    text = policy_copy.read_text()
    policy_copy.write_text(re.sub(r"confidence_floor: [0-9.]+", "confidence_floor: 0.0", text))
    ctl = start_controller([sim_backend], config_path=policy_copy)
    admin = {"X-Admin-Token": ctl.admin_token}
    body = {"model": "sim", "temperature": 0, "max_tokens": 8,
            "messages": [{"role": "user", "content": "Can you write a short poem about autumn leaves?"}]}
    first = httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30)
    assert first.headers["x-cache-category"] == "chat"
    policy_copy.write_text(re.sub(r"confidence_floor: [0-9.]+", "confidence_floor: 1.0", text))
    assert httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30).status_code == 200
    second = httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30)
    assert second.headers["x-cache-category"] == "factual"  # nothing is that certain: the stricter default
    metrics = httpx.get(ctl.url + "/metrics", timeout=30).text
    assert 'adaptive_category_assignments_total{category="chat",source="model"} 1.0' in metrics
    assert 'adaptive_category_assignments_total{category="factual",source="low_confidence"} 1.0' in metrics
    assert "adaptive_classifier_low_confidence_total 1.0" in metrics
    (policy_copy.parent / "classifier.npz").write_bytes(b"not weights")
    refused = httpx.post(ctl.url + "/admin/reload", headers=admin, timeout=30)
    assert refused.status_code == 422
    message = refused.json()["error"]["message"]
    assert re.search(r"policies.yaml:\d+: classifier.weights: .*classifier.npz: not a readable", message), message
    assert httpx.post(ctl.url + "/v1/chat/completions", json=body, timeout=30).status_code == 200
