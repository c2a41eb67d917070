"""Process helpers shared by the demo stack, the tests and the benchmarks.

One module, imported by `controller.stack`, `tests/` and `bench/`, so none of them reaches
into another's internals (and `controller.cli` <-> `controller.stack` is no longer a cycle).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

GRACE_SECONDS = 20.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_http(url: str, proc: subprocess.Popen | None, timeout: float) -> bool:
    """Poll `url` until it answers 200 (True), `proc` exits or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        try:
            if httpx.get(url, timeout=2.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    return False


def group_members(pgid: int) -> list[int]:
    """Live processes (zombies excluded) in process group `pgid`, read from /proc."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        state, _ppid, pgrp = stat[stat.rfind(")") + 2:].split()[:3]
        if state != "Z" and int(pgrp) == pgid:
            members.append(int(entry.name))
    return members


def stop_group(proc: subprocess.Popen, grace: float = GRACE_SECONDS) -> None:
    """SIGTERM the process group of `proc` (started with `start_new_session`), wait until every
    process in it has exited, SIGKILL what is left after `grace` seconds.

    Waiting for `proc` alone is not enough: a child of it (the controller's embedded Redis writing
    its final snapshot) can outlive it by a moment, and a caller that then removes the child's
    data directory leaves a Redis that cannot save and so refuses to exit."""
    deadline = time.monotonic() + grace
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    while time.monotonic() < deadline:
        proc.poll()  # reap the leader: a zombie still counts as a member for kill(2)
        if not group_members(proc.pid):
            break
        time.sleep(0.05)
    else:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def start_vllm(model: str, port: int, log_path: str, max_model_len: int = 2048,
               profiles: str | None = None, extra: list[str] | None = None, eager: bool = True) -> subprocess.Popen:
    """`vllm-adaptive serve MODEL --plugin adaptive` on 127.0.0.1:`port`, in its own process group
    (`extra`: more `vllm serve` arguments). Eager by default: it starts in seconds, where a compiled
    engine compiles for minutes on 2 cores (plus one view per served profile)."""
    cmd = [
        sys.executable, "-m", "vllm_adaptive.cli", "serve", model, "--plugin", "adaptive",
        "--host", "127.0.0.1", "--port", str(port), *(["--enforce-eager"] if eager else []),
        "--max-model-len", str(max_model_len), "--served-model-name", "smollm2",
    ]
    if profiles:
        cmd += ["--adaptive-profiles", profiles]
    cmd += extra or []
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)
