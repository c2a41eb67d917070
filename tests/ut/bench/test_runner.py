"""`python -m bench all`'s run record (runs.json): what `--resume` skips, and what the report says about
whether the figures come from one run of the whole suite. Pure file logic; the real runner end to end
is tests/e2e/test_bench_quick.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import record, unfinished
from bench.report import headline, runs
from bench.suite import BENCHES

ROOT = Path(__file__).resolve().parents[3]


def _entry(started: str, exit_code: int = 0, invoked: str | None = None, partial: bool = False,
           commit: str = "abc1234") -> dict[str, object]:
    return {"seconds": 60, "exit": exit_code, "finished": started, "suite_started": started,
            "invoked": invoked or started, "commit": commit, "quick": False, "partial": partial}


def test_resume_skips_what_the_last_full_run_finished_and_nothing_else(tmp_path: Path):
    path = tmp_path / "runs.json"
    names = [b.name for b in BENCHES]
    record(path, names[0], _entry("2026-01-01T00:00:00+00:00"))  # an older full run
    for name in names[1:4]:
        record(path, name, _entry("2026-01-02T00:00:00+00:00"))
    record(path, names[4], _entry("2026-01-02T00:00:00+00:00", exit_code=1))  # failed: run it again
    record(path, names[5], _entry("2026-01-03T00:00:00+00:00", partial=True))  # an --only run is not resumed
    started, done = unfinished(path)
    assert started == "2026-01-02T00:00:00+00:00"
    assert done == set(names[1:4])


def test_resume_refuses_without_a_full_run(tmp_path: Path):
    with pytest.raises(ValueError, match="no full run"):
        unfinished(tmp_path / "runs.json")
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--resume"], capture_output=True, text=True,
                          cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2 and "no full run" in proc.stderr, proc.stderr
    proc = subprocess.run([sys.executable, "-m", "bench", "all", "--resume", "--quick"], capture_output=True,
                          text=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 2 and "not with --quick" in proc.stderr, proc.stderr


def test_report_says_one_run_only_when_every_benchmark_finished_in_it(tmp_path: Path):
    path = tmp_path / "runs.json"
    assert "No `runs.json`" in runs(tmp_path)[0]
    start = "2026-01-02T00:00:00+00:00"
    for b in BENCHES[:-1]:
        record(path, b.name, _entry(start))
    assert runs(tmp_path)[0].startswith("These figures come from more than one run")
    record(path, BENCHES[-1].name, _entry(start, invoked="2026-01-02T05:00:00+00:00", commit="def5678"))
    line = runs(tmp_path)[0]
    assert line.startswith("The whole suite ran as one run") and "resumed once" in line, line
    assert "commits abc1234, def5678" in line
    record(path, BENCHES[0].name, _entry(start, exit_code=1))
    assert runs(tmp_path)[0].startswith("These figures come from more than one run")


def test_run_table_names_each_benchmarks_cpu_and_warns_when_they_differ(tmp_path: Path):
    path = tmp_path / "runs.json"
    start = "2026-01-02T00:00:00+00:00"
    record(path, BENCHES[0].name, _entry(start) | {"cpu_flags": "fma avx2 avx512f avx512_bf16"})
    record(path, BENCHES[1].name, _entry(start))  # recorded before the field existed
    table = runs(tmp_path)
    assert any(BENCHES[0].name in line and line.endswith("| AVX-512 + bf16 |") for line in table)
    assert any(BENCHES[1].name in line and line.endswith("| not recorded |") for line in table)
    assert any(line.startswith("The benchmarks ran on more than one CPU") for line in table)
    record(path, BENCHES[1].name, _entry(start) | {"cpu_flags": "fma avx2 avx512f avx512_bf16"})
    assert not any(line.startswith("The benchmarks ran on more than one CPU") for line in runs(tmp_path))


def test_headline_names_the_winner_of_each_figure_either_way(tmp_path: Path):
    size = {"entries": 100, "fill_seconds": 1.0, "miss": {"p50_ms": 1.0}, "hit": {"p50_ms": 1.0}, "redis_mb": 10.0}
    ours = {"sizes": [size], "tenants": {"served_to_other_tenant_default": False},
            "break_even_hit_rate": {"rate": 0.03}}
    theirs = {"sizes": [size | {"hit": {"p50_ms": 10.0}, "redis_mb": 5.0}],
              "tenants": {"served_to_other_tenant_default": True}, "break_even_hit_rate": {"rate": 0.0302}}
    (tmp_path / "cache_compare.json").write_text(json.dumps(
        {"sizes": [100], "backend_seconds": 0.2, "quality": {}, "systems": {"this project": ours, "anchor": theirs}}))
    rows = {line.split(" | ")[0].lstrip("| "): line for line in headline(tmp_path) if line.startswith("| ")}
    assert rows["cache hit lookup p50, 100 entries, embedding excluded"].endswith("**this project** |")
    assert rows["memory for 100 entries (Redis + process + disk)"].endswith("**anchor** |")
    assert rows["break-even hit rate behind a 200 ms backend"].endswith("**tie** |")
    assert rows["tenant B served tenant A's answer, default setup"].endswith("**this project** |")
