"""`adaptive-controller up`: the whole demo stack in one command, stopped cleanly by Ctrl-C.

Starts `vllm-adaptive serve` (vLLM with the adaptive plugin) on the offline SmolLM2
folder in its own process group, waits until it serves, then runs the controller
(with its embedded Redis) in this process. On exit every child is terminated: the
vLLM group by SIGTERM (SIGKILL after a grace period), Redis by the controller.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

import httpx

from controller.cli import run_controller
from vllm_adaptive import model_store

VLLM_START_TIMEOUT = 600.0
GRACE_SECONDS = 20.0


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


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the process group of `proc`, SIGKILL what is left after the grace period."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def start_vllm(model: str, port: int, log_path: str, max_model_len: int = 2048,
               profiles: str | None = None) -> subprocess.Popen:
    """`vllm-adaptive serve MODEL --plugin adaptive` on 127.0.0.1:`port`, in its own process group."""
    cmd = [
        sys.executable, "-m", "vllm_adaptive.cli", "serve", model, "--plugin", "adaptive",
        "--host", "127.0.0.1", "--port", str(port), "--enforce-eager",
        "--max-model-len", str(max_model_len), "--served-model-name", "smollm2",
    ]
    if profiles:
        cmd += ["--adaptive-profiles", profiles]
    with open(log_path, "w") as log:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True)


def run_stack(args: argparse.Namespace) -> int:
    model = args.model or str(model_store.ensure())
    log_path = args.vllm_log or os.path.join(tempfile.gettempdir(), "vllm-adaptive-vllm.log")
    vllm_url = f"http://127.0.0.1:{args.vllm_port}"
    print(f"[up] starting vLLM with the adaptive plugin on {model} (log: {log_path})", flush=True)
    vllm = start_vllm(model, args.vllm_port, log_path)
    try:
        if not wait_http(vllm_url + "/health", vllm, VLLM_START_TIMEOUT):
            print(f"[up] vLLM did not come up; last lines of {log_path}:", file=sys.stderr)
            with open(log_path) as fh:
                print("".join(fh.readlines()[-30:]), file=sys.stderr)
            return 1
        status = httpx.get(vllm_url + "/v1/adaptive/status", timeout=10).json()
        workers = ", ".join(f"pid {w['pid']} runs {w['runtime_model_class']}" for w in status["workers"])
        print(f"[up] vLLM ready at {vllm_url}; plugin active={status['active']} ({workers})", flush=True)

        args.backend = [vllm_url]
        controller_url = f"http://{args.host}:{args.port}"

        def announce(server) -> None:
            def watch() -> None:
                if wait_http(controller_url + "/health", None, 120):
                    print(
                        f"\n[up] controller ready: {controller_url}/v1  (metrics: {controller_url}/metrics)\n"
                        f"[up] try:\n  curl -s {controller_url}/v1/chat/completions -H 'Content-Type: application/json' "
                        "-d '{\"model\": \"smollm2\", \"temperature\": 0, \"max_tokens\": 64, "
                        "\"messages\": [{\"role\": \"user\", \"content\": \"What is the capital of France?\"}]}' -i\n"
                        "[up] Ctrl-C stops vLLM, the controller and Redis.", flush=True,
                    )
                while not server.should_exit:  # vLLM died: stop the controller too
                    if vllm.poll() is not None:
                        print(f"[up] vLLM exited ({vllm.returncode}); stopping", file=sys.stderr, flush=True)
                        server.should_exit = True
                    time.sleep(1.0)

            threading.Thread(target=watch, daemon=True).start()

        return run_controller(args, ready=announce)
    finally:
        stop_group(vllm)
        print("[up] stopped", flush=True)
