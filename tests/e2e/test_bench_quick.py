"""`python -m bench all --quick`: the benchmark harness end to end on tiny settings, as CI runs it.

The quick set measures this project's cache beside the real anchors (RedisVL's SemanticCache on
Redis 8 + RediSearch, GPTCache), installed from PyPI into bench/.anchors on first use. Its numbers
mean nothing; this checks that every quick benchmark runs, writes its JSON, and that the report is
built from them, so a broken harness is caught before anyone spends hours on a full run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_bench_runs_every_quick_benchmark_and_writes_the_report():
    from bench.suite import BENCHES

    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--quick"], capture_output=True, text=True,
                          timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = Path(proc.stdout.strip().splitlines()[-1].removeprefix("report: "))
    quick = [b.name for b in BENCHES if b.quick is not None]
    assert quick and all(f"{name}: ok" in proc.stdout for name in quick), proc.stdout
    for name in quick:
        assert json.loads((report.parent / f"{name}.json").read_text())
    runs = json.loads((report.parent / "runs.json").read_text())
    assert sorted(runs) == sorted(quick) and all(r["exit"] == 0 and r["quick"] for r in runs.values()), runs
    text = report.read_text()
    assert "RedisVL" in text and "GPTCache" in text
    headline = text.split("## Headline")[1].split("\n## ")[0]
    assert "| redisvl: " in headline and "| gptcache: " in headline, headline
    assert all(f"| {name} | " in text.split("## How long each benchmark took")[1] for name in quick)
