"""Every benchmark, one after another, then the report.

    python -m bench all [--quick] [--only NAME,...] [--resume]     (make bench)

Benchmarks run one at a time, each in its own process (they time the same cores: never two at
once), with a progress line and the elapsed time; a failing one is reported and the rest go on.
Then bench/REPORT.md is regenerated from bench/results/ (bench.report). `--quick` runs the
harness end to end on tiny settings into a temporary folder and writes the report there: a
smoke test of the harness (a few minutes), whose numbers mean nothing. How long each benchmark
took, when and at which commit is kept in runs.json beside the results (the report shows it, so a
reader can tell whether the figures come from one run of the whole suite or from several). The full
suite takes hours on 2 cores: `--resume` continues the last full run where it stopped (the benchmarks
it finished are kept, not rerun; the report says it was resumed).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from bench import report
from bench.machine import cpu_flags
from bench.suite import BENCHES, Bench


def plan(quick: bool, only: set[str] | None, out: Path) -> list[tuple[Bench, list[str]]]:
    """The commands to run, in order."""
    chosen = []
    for bench in BENCHES:
        if (only is not None and bench.name not in only) or (quick and bench.quick is None):
            continue
        args = list(bench.quick if quick and bench.quick is not None else bench.full)
        if bench.takes_out:
            args += ["--out", str(out)]
        chosen.append((bench, [sys.executable, "-m", bench.module, *args]))
    return chosen


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _commit() -> str:
    """The checkout's commit (with `+changes` when the tree differs from it): what the figures measured."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "") if head.returncode == 0 else ""


def record(path: Path, name: str, entry: dict[str, object]) -> None:
    """Merge one benchmark's run into runs.json (`--only` replaces its own rows, keeps the others)."""
    runs = report.read_runs(path)
    runs[name] = entry
    path.write_text(json.dumps(runs, indent=1, sort_keys=True) + "\n")


def unfinished(path: Path) -> tuple[str, set[str]]:
    """The last full suite run in runs.json (its start) and the benchmarks it finished: what --resume
    skips. ValueError when there is no full run to resume."""
    runs = report.read_runs(path)
    full = [r for r in runs.values() if not r["quick"] and not r.get("partial", False)]  # rows of c15c5e7 lack it
    if not full:
        raise ValueError(f"no full run of the suite in {path} to resume: run `python -m bench all`")
    last = max(r["suite_started"] for r in full)
    return last, {name for name, r in runs.items() if r["suite_started"] == last and r["exit"] == 0}


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["all"])
    parser.add_argument("--quick", action="store_true", help="tiny settings into a temporary folder (smoke test)")
    parser.add_argument("--only", default=None, help=f"comma-separated names of {[b.name for b in BENCHES]}")
    parser.add_argument("--resume", action="store_true",
                        help="continue the last full run: skip the benchmarks it finished (not with --quick/--only)")
    args = parser.parse_args()
    if args.resume and (args.quick or args.only):
        parser.error("--resume continues a full run: not with --quick or --only")
    only = set(args.only.split(",")) if args.only else None
    unknown = (only or set()) - {b.name for b in BENCHES}
    if unknown:
        parser.error(f"unknown benchmarks {sorted(unknown)}")
    out = Path(tempfile.mkdtemp(prefix="bench-quick-")) if args.quick else Path("bench/results")
    steps = plan(args.quick, only, out)
    invoked, commit = _now(), _commit()
    started = invoked
    if args.resume:
        try:
            started, done = unfinished(out / "runs.json")
        except ValueError as exc:
            parser.error(str(exc))
        steps = [(bench, command) for bench, command in steps if bench.name not in done]
        print(f"resuming the run started {started}: {len(done)} benchmarks done, {len(steps)} to go", flush=True)
    logs = out if args.quick else Path(tempfile.mkdtemp(prefix="bench-logs-"))
    failed = []
    for i, (bench, command) in enumerate(steps, 1):
        print(f"[{i}/{len(steps)}] {bench.name}: {' '.join(command[1:])}", flush=True)
        t0 = time.monotonic()
        log = logs / f"{bench.name}.log"
        with open(log, "w") as sink:
            code = subprocess.run(command, stdout=sink, stderr=subprocess.STDOUT).returncode
        seconds = time.monotonic() - t0
        print(f"[{i}/{len(steps)}] {bench.name}: {'ok' if code == 0 else f'FAILED (exit {code}, see {log})'} "
              f"in {seconds:.0f} s", flush=True)
        record(out / "runs.json", bench.name, {"seconds": round(seconds), "exit": code, "finished": _now(),
                                                 "suite_started": started, "invoked": invoked,
                                                 "commit": commit, "quick": args.quick, "partial": only is not None,
                                                 "cpu_flags": cpu_flags()})
        if code != 0:
            failed.append(bench.name)
    target = out / "REPORT.md" if args.quick else Path("bench/REPORT.md")
    target.write_text(report.build(out, link="" if args.quick else "results/"))
    print(f"report: {target}" + (f"; failed: {failed}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
