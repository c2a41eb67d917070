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
           "--max-ppl-increase", "0.10", "--kv-fractions", "0.5", "--kv-strategies", "uniform,sensitivity",
           "--kv-reference-tokens", "512", "--kv-probe-tokens", "128", "--kv-calib-chunks", "1", "--kv-eval-chunks", "1"]
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
    assert len(kept) + len(refused) == 6  # 2 strategies x 2 skip budgets + 2 KV allocations
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
        assert "exceeds the floor of +10.0%" in line and line.split()[0] in proc.stderr
    # the file loads back as a valid profile file for this model
    inspect = subprocess.run([sys.executable, "-m", "vllm_adaptive.cli", "inspect", str(out), "--model", str(smollm2_dir)],
                             capture_output=True, text=True, timeout=120)
    assert inspect.returncode == 0 and "valid for" in inspect.stdout
