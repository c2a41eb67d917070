"""The plugin is loaded inside the process that runs the model, and only when allowed."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.engine


def test_plugin_active_in_the_worker_process(tiny_llama_dir):
    """Multi-process engine (as in `vllm serve`): the worker reports our model class and pid."""
    script = textwrap.dedent(f"""
        import json, os
        os.environ["VLLM_PLUGINS"] = "adaptive"
        if __name__ == "__main__":
            from vllm import LLM, SamplingParams
            llm = LLM({str(tiny_llama_dir)!r}, enforce_eager=True, max_model_len=256, max_num_seqs=4)
            status = llm.collective_rpc("adaptive_status")
            out = llm.generate(["Hello"], SamplingParams(max_tokens=4, temperature=0))
            print("RESULT", json.dumps({{"status": status, "pid": os.getpid(),
                  "tokens": len(out[0].outputs[0].token_ids)}}))
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "1"})
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    import json

    result = json.loads(line[0][7:])
    (worker,) = result["status"]
    assert worker["pid"] != result["pid"]  # a different process from the one that built the LLM
    # no profiles: vLLM's own model, the plugin only recorded the architecture it built
    assert worker["plugin_loaded"] and worker["runtime_model_class"] == "LlamaForCausalLM"
    assert worker["model_class"] == "LlamaForCausalLM" and worker["stacks"] == []
    assert worker["patches"] == ["layer-stack", "worker-status-rpc", "batch-layout", "compile-profile-views",
                                 "attention-kv-budget", "sink-window-kv-spec", "sink-window-manager"]
    assert result["tokens"] == 4


def test_plugin_filtered_out_leaves_stock_vllm(tiny_llama_dir):
    """VLLM_PLUGINS without 'adaptive' loads stock Llama (single process, in-process check)."""
    script = textwrap.dedent(f"""
        import os
        os.environ["VLLM_PLUGINS"] = ""
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if __name__ == "__main__":
            from vllm import LLM
            llm = LLM({str(tiny_llama_dir)!r}, enforce_eager=True, max_model_len=256, max_num_seqs=4)
            print("RESULT", llm.collective_rpc(lambda self: type(self.get_model()).__name__)[0])
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and line, proc.stderr[-3000:]
    assert line[0] == "RESULT LlamaForCausalLM"
