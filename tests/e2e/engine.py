"""Run a snippet against a fresh single-process vLLM engine (a subprocess, so every test gets a
clean vLLM: the plugin's state and vLLM's globals are per process)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Water boils at"]


def run_engine(model_dir, body: str, plugins: str = "adaptive", timeout: int = 600) -> subprocess.CompletedProcess:
    """Run `body` in a fresh single-process engine (`llm`, `sp(profile)` and PROMPTS defined)."""
    script = textwrap.dedent(f"""
        import json, os
        os.environ["VLLM_PLUGINS"] = {plugins!r}
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            PROMPTS = {PROMPTS!r}
            def sp(profile):
                extra = {{"adaptive_profile": profile}} if profile else None
                return SamplingParams(max_tokens=16, temperature=0, extra_args=extra)
            def texts(outs):
                return [o.outputs[0].text for o in outs]
    """) + textwrap.indent(textwrap.dedent(body), "    ")
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})


def result(proc):
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    return json.loads(lines[-1][7:])
