"""Per-category quality bounds against the profile file: the I/O around policies.quality.

A category's `max_quality_loss` is checked against the figures `vllm-adaptive calibrate
--category-data` measured on that category; the policy names the file in `compute_profiles`
(relative to the policy file's folder), `adaptive-controller check --profiles FILE` overrides it.
Light imports only (yaml, pydantic, the pure profile reader): `check` loads this.
"""

from __future__ import annotations

from pathlib import Path

from policies.quality import FULL, Measured, QualityProblem, quality_problems, steps, suggest
from policies.schema import PolicyConfig, PolicyError, QualityBound, located_error


def profile_file(config: PolicyConfig, policy_path: Path, override: Path | None = None) -> Path | None:
    """The profile file the policy's bounds refer to (None: the policy names none)."""
    if override is not None:
        return override
    return None if config.compute_profiles is None else policy_path.parent / config.compute_profiles


def read_figures(path: Path) -> tuple[Measured, dict[str, float]]:
    """Per-category figures of every profile in `path`, and each per-request profile's compute
    cost (share of layers it runs). Profiles with KV budgets are left out of the costs: a KV
    layout is the engine's (its default profile's), not something a request can choose."""
    from vllm_adaptive.profiles import ProfileSet

    table = ProfileSet.load(path)
    measured = {name: p.categories for name, p in table.profiles.items()}
    cost = {name: 1 - len(p.skip) / table.num_layers for name, p in table.profiles.items() if not p.kv}
    return measured, cost


def problems(config: PolicyConfig, policy_path: Path, override: Path | None = None) -> list[QualityProblem]:
    """What the policy's max_quality_loss bounds refuse (raises PolicyError for an unreadable file)."""
    from vllm_adaptive.profiles import ProfileError

    path = profile_file(config, policy_path, override)
    if not any(c.policy.max_quality_loss and any(p != FULL for _, p in steps(c.policy)) for c in config.categories):
        return []  # every bounded category runs full only: nothing to look up
    if path is None:
        return quality_problems(config, None)
    try:
        measured, _ = read_figures(path)
    except ProfileError as exc:
        raise located_error(policy_path.read_text(), str(policy_path), [(("compute_profiles",), str(exc))]) from None
    return quality_problems(config, measured, str(path))


def check(config: PolicyConfig, policy_path: Path, override: Path | None = None) -> None:
    """Refuse (PolicyError naming file:line:field, category, profile and figure) a policy that
    would serve a category a profile beyond its bound or never measured on it."""
    found = problems(config, policy_path, override)
    if found:
        raise located_error(policy_path.read_text(), str(policy_path), [(p.loc, p.message) for p in found])


def suggestions(config: PolicyConfig, path: Path, default_bound: QualityBound | None) -> str:
    """Human-readable proposal: per category, the profiles within its bound, fastest first, with figures."""
    measured, cost = read_figures(path)
    lines = []
    for category, fits in suggest(config, measured, cost, default_bound).items():
        bound = config.category(category).policy.max_quality_loss or default_bound
        assert bound is not None  # suggest() only returns categories with a bound
        limits = ", ".join(f"{k} {v:g}" for k, v in bound.model_dump().items() if v is not None)
        lines.append(f"{category} ({limits}{'' if config.category(category).policy.max_quality_loss else ', from the command line'}):")
        if not any(category in measured.get(p, {}) for p in cost if p != "full"):
            lines.append(f"  no profile of {path} was measured on {category!r}: full")
            continue
        for rank, name in enumerate(fits):
            figures = measured.get(name, {}).get(category, {})
            shown = ", ".join(f"{k} {figures[k]:.3g}" for k in ("delta_ppl_pct", "top1_agreement", "answer_exact_match",
                                                                  "answer_similarity") if k in figures)
            tag = "proposed compute_profile" if rank == 0 else "also within the bound"
            lines.append(f"  {name:<16} runs {cost[name]:.0%} of the layers  {shown}  <- {tag}")
        if fits == ["full"]:
            lines.append("  (no profile that skips layers is within the bound)")
    return "\n".join(lines)
