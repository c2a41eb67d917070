"""stop_group stops a whole process group, not only its leader (real processes, real signals)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from controller.procs import group_members, stop_group

# A child that needs a moment after SIGTERM to finish writing (as Redis saves its snapshot),
# or that ignores SIGTERM altogether; `started` appears once its handler is in place.
CHILD = textwrap.dedent("""
    import pathlib, signal, sys, time
    out = pathlib.Path(sys.argv[1])
    def finish(*_):
        time.sleep(1.0)
        (out / "saved").write_text("saved")
        sys.exit(0)
    signal.signal(signal.SIGTERM, signal.SIG_IGN if sys.argv[2] == "ignore" else finish)
    (out / "started").write_text("")
    time.sleep(600)
""")
# A leader that exits at once on SIGTERM, leaving its child behind in the group.
LEADER = textwrap.dedent("""
    import pathlib, signal, subprocess, sys, time
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    subprocess.Popen([sys.executable, "-c", sys.argv[1], *sys.argv[2:]])
    while not (pathlib.Path(sys.argv[2]) / "started").exists():
        time.sleep(0.02)
    print("ready", flush=True)
    time.sleep(600)
""")


def start_group(tmp_path: Path, child_on_term: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", LEADER, CHILD, str(tmp_path), child_on_term],
                            stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert proc.stdout.readline().strip() == "ready"
    assert len(group_members(proc.pid)) == 2
    return proc


def test_waits_for_a_child_that_outlives_the_leader(tmp_path):
    """The caller may remove the child's files as soon as stop_group returns: it must be done."""
    proc = start_group(tmp_path, "finish")
    stop_group(proc, grace=20)
    assert (tmp_path / "saved").read_text() == "saved"
    assert group_members(proc.pid) == []


def test_kills_what_ignores_sigterm_after_the_grace(tmp_path):
    proc = start_group(tmp_path, "ignore")
    started = time.monotonic()
    stop_group(proc, grace=1.0)
    assert 1.0 <= time.monotonic() - started < 10
    assert group_members(proc.pid) == []
    assert not (tmp_path / "saved").exists()


def test_a_group_already_gone_is_fine(tmp_path):
    proc = start_group(tmp_path, "finish")
    stop_group(proc)
    stop_group(proc)  # twice: nothing left to signal, returns at once
    assert group_members(proc.pid) == []
