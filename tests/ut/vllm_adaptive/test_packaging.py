"""The distribution exposes the plugin the way vLLM and users look for it."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys

import pytest

from vllm_adaptive import cli, model_store


def test_entry_points_are_registered():
    general = {e.name: e.value for e in importlib.metadata.entry_points(group="vllm.general_plugins")}
    endpoint = {e.name: e.value for e in importlib.metadata.entry_points(group="vllm.endpoint_plugins")}
    assert general["adaptive"] == "vllm_adaptive:register"
    assert endpoint["adaptive"] == "vllm_adaptive.endpoint:AdaptiveEndpointPlugin"


def test_launcher_env_loads_exactly_the_named_plugins():
    env = cli.plugin_env(["adaptive", "other"], {"HF_HUB_OFFLINE": "0"})
    assert env["VLLM_PLUGINS"] == "adaptive,other"
    assert env["HF_HUB_OFFLINE"] == "0"  # the user's explicit choice wins
    assert cli.plugin_env([], {})["VLLM_PLUGINS"] == "adaptive"


def test_launcher_passes_other_arguments_to_vllm_serve():
    parser = cli.build_parser()
    args, rest = parser.parse_known_args(["serve", "/m", "--plugin", "adaptive", "--port", "9", "--enforce-eager"])
    assert args.plugin == ["adaptive"] and rest == ["--port", "9", "--enforce-eager"]
    assert cli.vllm_serve_argv("/m", rest)[1:] == ["-m", "vllm.entrypoints.cli.main", "serve", "/m", "--port", "9", "--enforce-eager"]


@pytest.mark.parametrize("command", [["vllm-adaptive", "--help"], ["vllm-adaptive", "serve", "--help"],
                                     ["adaptive-controller", "--help"], ["adaptive-controller", "serve", "--help"]])
def test_console_scripts_have_help(command):
    exe = [sys.executable, "-m", "vllm_adaptive.cli" if command[0] == "vllm-adaptive" else "controller.cli"]
    out = subprocess.run(exe + command[1:], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "usage:" in out.stdout


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(model_store.ModelUnavailable, match="vllm-adaptive model smollm2"):
        model_store.require(tmp_path / "nowhere")


def test_smollm2_folder_is_verified_and_idempotent(smollm2_dir):
    assert model_store.is_valid(smollm2_dir)
    assert model_store.ensure() == smollm2_dir  # second call: no conversion
    (smollm2_dir / "config.json").touch()  # unchanged content still verifies
    assert model_store.is_valid(smollm2_dir)


def test_launcher_puts_profiles_into_additional_config():
    merged = cli.with_adaptive_config(["--port", "9", "--additional-config", '{"other": 1}'], {"profiles": "/p.json"})
    assert merged[:2] == ["--port", "9"] and merged[2] == "--additional-config"
    assert json.loads(merged[3]) == {"other": 1, "adaptive": {"profiles": "/p.json"}}
    assert cli.with_adaptive_config(["--x"], {}) == ["--x"]


AVX2_ONLY = "processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n\nprocessor\t: 1\nflags\t\t: fpu sse2 avx avx2 fma\n"
ZEN4 = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"
ARM_BF16 = "processor\t: 0\nFeatures\t: fp asimd bf16 i8mm\n"


@pytest.mark.parametrize("cpuinfo, passthrough, expected", [
    (AVX2_ONLY, ["--port", "9"], ["--port", "9", "--dtype", "float32"]),  # emulated bf16: fp32
    (ZEN4, ["--port", "9"], ["--port", "9"]),  # native bf16: vLLM's auto stays
    (ARM_BF16, [], []),
    (AVX2_ONLY, ["--dtype", "bfloat16"], ["--dtype", "bfloat16"]),  # the user's choice wins
    (AVX2_ONLY, ["--dtype=half"], ["--dtype=half"]),
    ("", [], []),  # no cpuinfo (not Linux): leave vLLM's choice alone
])
def test_launcher_picks_fp32_on_cpus_without_native_bf16(cpuinfo, passthrough, expected):
    out, reason = cli.cpu_dtype_args(passthrough, cpuinfo)
    assert out == expected
    assert (reason is not None) == (out != passthrough)
    if reason:
        assert "no native bf16" in reason and "avx512_bf16" in reason


def test_launcher_dtype_choice_on_this_machine():
    """The real /proc/cpuinfo of the test machine: fp32 exactly when no bf16 flag is listed."""
    text = cli._read_cpuinfo()
    flags = cli.cpu_flags(text)
    out, _ = cli.cpu_dtype_args([], text)
    assert (out == ["--dtype", "float32"]) == (flags is not None and not flags & cli.NATIVE_BF16_FLAGS)


@pytest.mark.parametrize("passthrough, scheduler", [
    ([], cli.GROUPING_SCHEDULER),  # compiled with profiles: one profile per step
    (["--enforce-eager"], None),  # eager: vLLM's scheduler, mixed steps run masked
    (["--scheduler-cls", "my.Scheduler"], "my.Scheduler"),  # the user's choice wins
])
def test_launcher_groups_profiles_per_step_in_compiled_engines(passthrough, scheduler):
    args = cli.build_parser().parse_args(["serve", "/m", "--adaptive-profiles", "p.json", "--adaptive-serve", "a,b"])
    argv, notes = cli.plugin_args(args, passthrough)
    given = argv[argv.index("--scheduler-cls") + 1] if "--scheduler-cls" in argv else None
    assert given == scheduler
    assert json.loads(argv[argv.index("--additional-config") + 1])["adaptive"]["serve"] == "a,b"
    assert any("compiles its own view" in n for n in notes) == ("--enforce-eager" not in passthrough)
