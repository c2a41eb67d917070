"""`adaptive-controller`: run the caching proxy, check a policy file, or bring up the demo stack.

    adaptive-controller check configs/policies.yaml
    adaptive-controller serve --config configs/policies.yaml --backend http://127.0.0.1:8100
    adaptive-controller up          # vLLM (CPU, SmolLM2, plugin) + controller + Redis
    adaptive-controller train-classifier --data rows.jsonl --policy configs/policies.yaml --out configs/classifier.npz
    adaptive-controller calibrate-cache --pairs pairs.jsonl.gz   # per-category error bounds
    adaptive-controller train-verifier                           # the learned cache verifier
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from controller.embeddings import ENCODERS
from vllm_adaptive import envs

DEFAULT_CONFIG = "configs/policies.yaml"


def default_data_dir() -> Path:
    """Where the embedded Redis keeps its data (append-only file and snapshots)."""
    return envs.home() / "redis"


def _check(args: argparse.Namespace) -> int:
    # Validation only: nothing here may import FastAPI, Redis or hnswlib (tested).
    from controller.snapshot import load_policies
    from policies.schema import PolicyError

    try:
        config = load_policies(Path(args.config))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    from controller import compute_profiles

    override = Path(args.profiles) if args.profiles else None
    try:
        compute_profiles.check(config, Path(args.config), override)
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    print(f"{args.config}: OK ({len(config.categories)} categories, default {config.default_category!r})")
    path = compute_profiles.profile_file(config, Path(args.config), override)
    bounded = [c.name for c in config.categories if c.policy.max_quality_loss]
    if bounded:
        print(f"max_quality_loss of {', '.join(bounded)}: met by every profile they run ({path or 'all full'})")
    print(json.dumps(config.model_dump(), indent=2))
    if config.classifier is not None:
        from controller.classifier import ClassifierError
        from controller.train_classifier import describe

        try:
            print(describe(config, Path(args.config).parent))
        except ClassifierError as exc:
            print(f"{args.config}: classifier.weights: {exc}", file=sys.stderr)
            return 1
    return 0


def _suggest(args: argparse.Namespace) -> int:
    from controller import compute_profiles
    from controller.snapshot import load_policies
    from policies.schema import PolicyError, QualityBound
    from vllm_adaptive.profiles import ProfileError

    try:
        config = load_policies(Path(args.config))
    except PolicyError as exc:
        print(exc, file=sys.stderr)
        return 1
    path = compute_profiles.profile_file(config, Path(args.config), Path(args.profiles) if args.profiles else None)
    if path is None:
        print(f"{args.config}: names no compute_profiles file; give --profiles FILE", file=sys.stderr)
        return 1
    limits = {k: getattr(args, k) for k in QualityBound.model_fields if getattr(args, k) is not None}
    try:
        print(compute_profiles.suggestions(config, path, QualityBound(**limits) if limits else None))
    except ProfileError as exc:
        print(exc, file=sys.stderr)
        return 1
    return 0


def add_serve_options(p: argparse.ArgumentParser) -> None:
    """Options shared by `serve` and `up`."""
    p.add_argument("--config", default=DEFAULT_CONFIG, help="policy YAML (default: %(default)s)")
    p.add_argument("--redis", default=None, metavar="URL",
                   help="Redis to keep documents in; default: start an embedded redis-server")
    p.add_argument("--data-dir", default=str(default_data_dir()),
                   help="embedded Redis data directory (default: %(default)s)")
    p.add_argument("--redis-port", type=int, default=None, help="embedded Redis port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--admin-token", default=None,
                   help="enables /admin/* (X-Admin-Token header); or set ADAPTIVE_ADMIN_TOKEN")
    p.add_argument("--upstream-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="longest silence accepted from a backend (before its answer, between stream "
                   "chunks); then the next backend is tried (default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=8 << 20, help="larger requests get 413 (default: %(default)s)")
    p.add_argument("--redis-timeout", type=float, default=0.5, metavar="SECONDS",
                   help="deadline of one Redis round-trip; past it the cache is bypassed (circuit breaker) "
                   "until Redis answers again (default: %(default)s)")
    p.add_argument("--encoder", default="minilm-int8-onnx", choices=list(ENCODERS),
                   help="query embedding model (bench/encoders.py compares them; default: %(default)s)")
    p.add_argument("--embed-deadline-ms", type=float, default=100.0, metavar="MS",
                   help="a query not embedded within this (queue wait included) bypasses the cache: "
                   "a miss, never a stall (default: %(default)s)")
    p.add_argument("--embed-max-batch", type=int, default=32,
                   help="most concurrent queries encoded together (default: %(default)s)")
    p.add_argument("--embed-workers", type=int, default=4,
                   help="encoder threads (one core each at most); two per core keep the cores busy "
                   "(default: %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adaptive-controller",
        description="Category-aware semantic cache and router in front of vLLM servers.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    check = sub.add_parser("check", help="validate a policy YAML file and print it (and its classifier's accuracy)")
    check.add_argument("config", help="policy YAML file")
    check.add_argument("--profiles", default=None, metavar="FILE",
                       help="profile file to check max_quality_loss against (default: the policy's compute_profiles)")
    suggest = sub.add_parser(
        "suggest-profiles", help="propose per category the fastest compute profile within its max_quality_loss",
        description="Read the per-category figures of a profile file (`vllm-adaptive calibrate --category-data`) "
        "and list, per category, the profiles that meet its max_quality_loss (or the bound given here, for "
        "categories that state none), fastest first.")
    suggest.add_argument("config", help="policy YAML file")
    suggest.add_argument("--profiles", default=None, metavar="FILE", help="default: the policy's compute_profiles")
    suggest.add_argument("--delta-ppl-pct", type=float, default=None, help="bound for categories that state none")
    suggest.add_argument("--min-top1-agreement", type=float, default=None)
    suggest.add_argument("--min-answer-agreement", type=float, default=None)
    suggest.add_argument("--min-answer-similarity", type=float, default=None)

    from controller import train_classifier  # numpy only (no encoder until run)

    train_classifier.add_options(sub.add_parser(
        "train-classifier", help="train the category classifier on labelled JSONL",
        description=train_classifier.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))

    # numpy and yaml only: the commands import encoders and models when run (`check` stays light).
    from controller import calibrate_cache
    from controller.verify import __main__ as verify_main

    calibrate_cache.add_options(sub.add_parser(
        "calibrate-cache", help="per-category cache operating points (threshold + verifier) from labelled pairs",
        description=calibrate_cache.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))
    verify_main.add_options(sub.add_parser(
        "train-verifier", help="fit the learned cache verifier on the hard-negative training split",
        description=verify_main.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
    ))

    serve = sub.add_parser(
        "serve", help="run the OpenAI-compatible caching proxy",
        description="OpenAI-compatible proxy (/v1/chat/completions, /v1/completions, /v1/models) "
        "with a semantic cache; /metrics for Prometheus; SIGHUP or POST /admin/reload re-reads --config.",
    )
    add_serve_options(serve)
    serve.add_argument("--backend", action="append", required=True, metavar="URL[#PROFILES]", type=_backend,
                       help="vLLM server base URL, e.g. http://127.0.0.1:8100 (repeatable); optionally the "
                       "compute profiles it serves, its default first (http://h:8100#calibrated-2); without "
                       "them they are read from the plugin's status route")

    up = sub.add_parser(
        "up", help="start vLLM (with the adaptive plugin) + controller + Redis: the demo stack",
        description="Start a vLLM server with the adaptive plugin on the offline SmolLM2 model, "
        "then the controller in front of it with an embedded Redis. Ctrl-C stops everything.",
    )
    add_serve_options(up)
    up.add_argument("--model", default=None, help="model folder (default: the offline SmolLM2 folder)")
    up.add_argument("--vllm-port", type=int, default=8100)
    up.add_argument("--vllm-log", default=None, help="file for the vLLM server's log")
    up.add_argument("--compiled", action="store_true",
                    help="start vLLM compiled (its default; faster decoding, one compiled view per served "
                    "profile: ~3.5 min to start on 2 cores) instead of eager (starts in seconds)")
    return parser


def _backend(spec: str) -> str:
    """Refuse a bad --backend at parse time, with the reason (controller.backends.parse_backend)."""
    from controller.backends import parse_backend

    try:
        parse_backend(spec)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return spec


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    envs.set_offline()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise
    args = build_parser().parse_args(argv)
    if args.command == "check":
        return _check(args)
    if args.command == "suggest-profiles":
        return _suggest(args)
    if args.command == "train-classifier":
        from controller import train_classifier

        return train_classifier.run(args)
    if args.command == "calibrate-cache":
        from controller import calibrate_cache

        return calibrate_cache.run(args)
    if args.command == "train-verifier":
        from controller.verify import __main__ as verify_main

        return verify_main.run(args)
    if args.command == "serve":
        from controller.serve import run_controller

        return run_controller(args)
    from controller.stack import run_stack

    return run_stack(args)


if __name__ == "__main__":
    sys.exit(main())
