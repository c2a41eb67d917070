"""End-to-end fixtures: a real `vllm-adaptive serve` on SmolLM2 and a real controller over HTTP."""

from __future__ import annotations

from pathlib import Path

import pytest

from controller.procs import free_port, start_vllm, stop_group, wait_http
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet


def wait_ready(url: str, proc=None, timeout: float = 300) -> None:
    if not wait_http(url, proc, timeout):
        raise TimeoutError(url)


SERVER_PROFILES = {"fast": [14, 15], "fastest": [8, 11, 14, 17, 20, 23]}


@pytest.fixture(scope="session")
def vllm_server(smollm2_dir, tmp_path_factory):
    """`vllm-adaptive serve SmolLM2 --plugin adaptive` (the OpenAI server, multi-process), with
    skip profiles whose default is `full`, so requests that name none run the stock model. A tool
    parser is set so that `tool_choice: "required"` is accepted (vLLM then emits tool calls from
    any model through structured output)."""
    port = free_port()
    folder = tmp_path_factory.mktemp("vllm")
    log = folder / "server.log"
    profiles = ProfileSet.of(ModelSpec.from_folder(smollm2_dir),
                             [Profile(n, frozenset(s)) for n, s in SERVER_PROFILES.items()]).dump(folder / "profiles.json")
    proc = start_vllm(str(smollm2_dir), port, str(log), max_model_len=1024, profiles=str(profiles),
                      extra=["--enable-auto-tool-choice", "--tool-call-parser", "pythonic"])
    url = f"http://127.0.0.1:{port}"
    try:
        wait_ready(url + "/health", proc)
    except Exception:
        stop_group(proc)
        raise RuntimeError(Path(log).read_text()[-4000:]) from None
    yield url
    stop_group(proc)
