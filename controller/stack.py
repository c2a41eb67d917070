"""`adaptive-controller up`: the whole demo stack in one command, stopped cleanly by Ctrl-C.

Starts `vllm-adaptive serve` (vLLM with the adaptive plugin) on the offline SmolLM2
folder in its own process group, waits until it serves, then runs the controller
(with its embedded Redis) in this process. On exit every child is terminated: the
vLLM group by SIGTERM (SIGKILL after a grace period), Redis by the controller.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from controller import compute_profiles
from controller.procs import start_vllm, stop_group, wait_http
from controller.serve import run_controller
from controller.snapshot import load_policies
from policies.schema import PolicyError
from vllm_adaptive import model_store
from vllm_adaptive.endpoint import STATUS_PATH

VLLM_START_TIMEOUT = 600.0


def run_stack(args: argparse.Namespace) -> int:
    model = args.model or str(model_store.ensure())
    log_path = args.vllm_log or os.path.join(tempfile.gettempdir(), "vllm-adaptive-vllm.log")
    vllm_url = f"http://127.0.0.1:{args.vllm_port}"
    # vLLM serves the profile file the policy's compute profiles were measured in (checked first)
    config_path = Path(args.config)
    try:
        config = load_policies(config_path)
        compute_profiles.check(config, config_path)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    profiles = compute_profiles.profile_file(config, config_path)
    print(f"[up] starting vLLM ({'compiled' if args.compiled else 'eager'}) with the adaptive plugin on {model} "
          f"(log: {log_path}; compute profiles: {profiles or 'none'})", flush=True)
    vllm = start_vllm(model, args.vllm_port, log_path, profiles=str(profiles.resolve()) if profiles else None,
                      eager=not args.compiled)
    try:
        if not wait_http(vllm_url + "/health", vllm, VLLM_START_TIMEOUT):
            print(f"[up] vLLM did not come up; last lines of {log_path}:", file=sys.stderr)
            with open(log_path) as fh:
                print("".join(fh.readlines()[-30:]), file=sys.stderr)
            return 1
        status = httpx.get(vllm_url + STATUS_PATH, timeout=10).json()
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
