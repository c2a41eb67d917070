"""`vllm-adaptive calibrate` on SmolLM2 (real weights, real text): metrics, quality, quality guard."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.engine


def test_calibrate_measures_and_guards_quality(smollm2_dir, tmp_path):
    out = tmp_path / "profiles.json"
    cmd = [sys.executable, "-m", "vllm_adaptive.cli", "calibrate", str(smollm2_dir), "--out", str(out),
           "--budgets", "1,2", "--strategies", "balanced,calibrated", "--calib-chunks", "1", "--eval-chunks", "1",
           "--max-ppl-increase", "0.10", "--kv-fractions", "0.5", "--kv-strategies", "uniform,sensitivity,retrieval",
           "--kv-reference-tokens", "512", "--kv-probe-tokens", "128", "--kv-calib-chunks", "1", "--kv-eval-chunks", "1",
           "--kv-retrieval-prompts", "2", "--kv-retrieval-tokens", "512"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    metrics = doc["layer_metrics"]
    assert {len(v) for v in metrics.values()} == {30}
    assert max(metrics["delta_ppl"]) > 0 and all(0 <= x <= 2 for x in metrics["block_influence"])
    assert doc["profiles"]["full"]["quality"]["delta_ppl_pct"] == pytest.approx(0.0)
    assert doc["profiles"]["full"]["quality"]["top1_agreement"] == pytest.approx(1.0)
    kept = {n: p for n, p in doc["profiles"].items() if n != "full"}
    refused = doc["calibration"]["refused"]
    # 2 strategies x 2 skip budgets + 3 KV strategies x (plain, 4 sinks); at 50 % of 512 tokens a sink
    # layer's floor (one sink block + a one-block window: 3 blocks of 128) does not fit, so the
    # sensitivity and retrieval sink allocations are refused with that reason
    assert len(kept) + len(refused) == 10
    not_allocated = [line for line in refused if "not allocated" in line]
    assert sorted(line.split()[0] for line in not_allocated) == ["kv-retrieval-sink4-50", "kv-sensitivity-sink4-50"]
    for p in kept.values():
        assert p["quality"]["delta_ppl_pct"] <= 10.0 and 0 < p["quality"]["top1_agreement"] < 1
    kv = doc["kv_calibration"]
    assert len(kv["sensitivity"]) == 30 and max(kv["sensitivity"]) > 0
    assert kv["full_quality"]["delta_ppl_pct"] == pytest.approx(0.0)
    for name in ("kv-uniform-50", "kv-sensitivity-50"):
        entry = kept.get(name) or next(line for line in refused if line.startswith(name))
        if isinstance(entry, dict):
            assert entry["kv_fraction"] == pytest.approx(0.5, abs=0.13) and len(entry["kv"]) == 30
    for line in refused:
        assert ("exceeds the floor of +10.0%" in line or line in not_allocated) and line.split()[0] in proc.stderr
    assert len(kv["retrieval"]) == len(kv["retrieval_sink"]) == len(kv["sensitivity_sink"]) == 30
    assert set(kv["top_layers"]) == {"perplexity", "retrieval", "perplexity-sink4", "retrieval-sink4"}
    # the file loads back as a valid profile file for this model
    inspect = subprocess.run([sys.executable, "-m", "vllm_adaptive.cli", "inspect", str(out), "--model", str(smollm2_dir)],
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0 and "valid for" in inspect.stdout


def test_calibrate_per_category_on_smollm2(smollm2_dir, tmp_path):
    """A real skip set on real category data: answers get worse than full's, by a measured amount."""
    from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet

    model = ModelSpec.from_folder(smollm2_dir)
    ProfileSet.of(model, [Profile("skip2", frozenset({5, 14}))]).dump(tmp_path / "in.json")
    out = tmp_path / "out.json"
    cmd = [sys.executable, "-m", "vllm_adaptive.cli", "calibrate", str(smollm2_dir), "--profiles", str(tmp_path / "in.json"),
           "--out", str(out), "--category-data", "code=humaneval,factual=sharegpt-factual", "--category-examples", "3",
           "--category-greedy-prompts", "2", "--category-new-tokens", "8"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    table = ProfileSet.load(out, model)
    record = table.sections["category_calibration"]["categories"]
    assert record["code"]["source"] == "humaneval" and record["code"]["chat_template"] is False
    assert record["factual"]["chat_template"] is True and record["factual"]["examples"] == 3
    for category in ("code", "factual"):
        skip = table.get("skip2").categories[category]
        assert skip["delta_ppl_pct"] > 0 and 0 < skip["top1_agreement"] < 1
        assert table.get("full").categories[category]["answer_similarity"] == 1
