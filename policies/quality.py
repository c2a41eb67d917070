"""Per-category quality bounds on compute profiles: which profile a category may run, and why not.

Pure: the caller reads the profile file (vllm_adaptive.profiles) and passes its per-category
figures in as `measured[profile][category][figure]`, as `calibrate --category-data` wrote them.
`full` is the reference every figure is measured against, so it always meets a bound.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from policies.schema import CategoryPolicy, PolicyConfig, QualityBound

FULL = "full"
Measured = Mapping[str, Mapping[str, Mapping[str, float]]]  # profile -> category -> figure -> value

#: bound field -> (figure in the profile file, True if the figure may not exceed the bound, label)
_FIGURES: dict[str, tuple[str, bool, str]] = {
    "delta_ppl_pct": ("delta_ppl_pct", True, "answer perplexity increase (%)"),
    "min_top1_agreement": ("top1_agreement", False, "top-1 agreement on answer tokens"),
    "min_answer_agreement": ("answer_exact_match", False, "greedy answers identical to full's"),
    "min_answer_similarity": ("answer_similarity", False, "greedy-answer similarity to full's"),
}


@dataclass(frozen=True)
class QualityProblem:
    """A profile a category may not run; `loc` is the policy field that names it."""

    category: str
    profile: str
    loc: tuple[Any, ...]
    message: str

    def __str__(self) -> str:
        return self.message


def exceeded(bound: QualityBound, figures: Mapping[str, float]) -> list[str]:
    """The parts of `bound` that `figures` (one profile on one category) break, with the figure."""
    out = []
    for name, (figure, upper, label) in _FIGURES.items():
        limit = getattr(bound, name)
        if limit is None:
            continue
        value = figures.get(figure)
        if value is None:
            out.append(f"{label} was not measured (no {figure!r} figure)")
        elif (value > limit) if upper else (value < limit):
            out.append(f"{label} is {value:.3g}, {'above' if upper else 'below'} max_quality_loss.{name} {limit:g}")
    return out


def steps(policy: CategoryPolicy) -> list[tuple[tuple[Any, ...], str]]:
    """Every profile a category can be served with: its compute_profile and each brownout step."""
    return [(("compute_profile",), policy.compute_profile)] + [
        (("load", "profile_ladder", i), p) for i, p in enumerate(policy.load.profile_ladder)]


def quality_problems(config: PolicyConfig, measured: Measured | None, source: str = "the profile file") -> list[QualityProblem]:
    """Each (category, profile) the policy would serve beyond its category's max_quality_loss, or
    that was never measured on that category (`measured` None: no profile file given)."""
    problems = []
    for index, category in enumerate(config.categories):
        bound = category.policy.max_quality_loss
        if bound is None:
            continue
        for field, profile in steps(category.policy):
            if profile == FULL:
                continue
            loc = ("categories", index, "policy", *field)
            where = f"category {category.name!r}: {'.'.join(map(str, field))} {profile!r}"
            figures = None if measured is None else measured.get(profile, {}).get(category.name)
            if measured is None:
                reason = "cannot be checked against max_quality_loss: the policy names no compute_profiles file"
            elif profile not in measured:
                reason = f"is not a profile of {source} (has {', '.join(sorted(measured))})"
            elif figures is None:
                reason = (f"was not measured on category {category.name!r} in {source} "
                          f"(run `vllm-adaptive calibrate --category-data {category.name}=SOURCE`)")
            else:
                broken = exceeded(bound, figures)
                if not broken:
                    continue
                reason = "exceeds its bound: " + "; ".join(broken)
            problems.append(QualityProblem(category.name, profile, loc, f"{where} {reason}"))
    return problems


def within(bound: QualityBound, measured: Measured, category: str, cost: Mapping[str, float]) -> list[str]:
    """Profiles measured on `category` that meet `bound`, cheapest first (`cost`: relative compute
    per token, e.g. share of layers run; profiles without a cost are not proposed)."""
    ok = [p for p in cost if p == FULL or (category in measured.get(p, {}) and not exceeded(bound, measured[p][category]))]
    return sorted(ok, key=lambda p: (cost[p], measured.get(p, {}).get(category, {}).get("delta_ppl_pct", 0.0)))


def suggest(config: PolicyConfig, measured: Measured, cost: Mapping[str, float],
            default_bound: QualityBound | None = None) -> dict[str, list[str]]:
    """Per category, the profiles within its max_quality_loss (or `default_bound` for a category that
    states none), fastest first: the first is the proposed compute_profile (brownout ladders take
    the next ones); a category whose only choice is `full` gets ["full"]."""
    out = {}
    for category in config.categories:
        bound = category.policy.max_quality_loss or default_bound
        if bound is not None:
            out[category.name] = within(bound, measured, category.name, cost)
    return out
