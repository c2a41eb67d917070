"""Schema of the controller's policy YAML, with errors that name file, line and field.

Pure: :func:`parse_policies` takes the YAML text and a source name (for messages),
never a path to open.
"""

from __future__ import annotations

import copy
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator


class PolicyError(ValueError):
    """An invalid policy document; ``str()`` is ``file:line: field: message`` lines."""

    def __init__(self, source: str, problems: list[tuple[int | None, str, str]]) -> None:
        self.source = source
        self.problems = problems
        lines = [
            f"{source}:{line if line is not None else '?'}: {field or '<document>'}: {msg}"
            for line, field, msg in problems
        ]
        super().__init__("\n".join(lines))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoadResponse(_Strict):
    """How far a category may trade quality for capacity as backend load rises."""

    threshold_floor: float | None = Field(
        default=None, ge=0.0, le=1.0,
        description="lowest similarity threshold under full load (never crossed); default: no relaxing",
    )
    ttl_max_seconds: int | None = Field(default=None, gt=0, description="TTL under full load (stale-while-busy)")
    profile_ladder: list[str] = Field(
        default_factory=list, description="compute profiles for rising load levels, e.g. [fast, fastest]",
    )


class MeasuredPoint(_Strict):
    """What an operating point measured on labelled pairs (written by `calibrate-cache`)."""

    precision: float = Field(ge=0.0, le=1.0)
    recall: float = Field(ge=0.0, le=1.0, description="share of labelled repeats/paraphrases served")
    false_hit_rate: float = Field(ge=0.0, le=1.0, description="share of labelled different questions served")
    false_hit_upper: float = Field(ge=0.0, le=1.0, description="95 % upper confidence limit of false_hit_rate")
    positives: int = Field(ge=0)
    negatives: int = Field(ge=0)
    pairs: str = Field(default="", description="the labelled pairs file it was measured on")


class VerifierSetting(_Strict):
    """Second stage of a lookup: of the `top_k` candidates at or above `similarity_threshold`,
    the verifier accepts at most one (the one scoring highest, if >= `min_score`)."""

    name: Literal["threshold", "guards", "learned", "guarded_learned"] = Field(
        default="threshold", description="threshold: cosine alone; guards: numbers, dates, units, negation, "
        "names, comparison and scope words must agree; learned: logistic score; guarded_learned: both",
    )
    min_score: float = Field(default=1.0, ge=0.0, le=1.0, description="verifier score needed to accept")
    top_k: int = Field(default=4, ge=1, le=64, description="candidates the index proposes")
    measured: MeasuredPoint | None = None


class QualityBound(_Strict):
    """Most quality a category's compute profiles may give up, as measured on the category's own
    prompts and answers (`vllm-adaptive calibrate --category-data`); `full` is the reference."""

    delta_ppl_pct: float | None = Field(
        default=None, ge=0.0, description="largest perplexity increase (%) on the category's reference answers")
    min_top1_agreement: float | None = Field(
        default=None, ge=0.0, le=1.0, description="smallest share of answer tokens whose top-1 prediction is full's")
    min_answer_agreement: float | None = Field(
        default=None, ge=0.0, le=1.0, description="smallest share of greedy answers identical to full's")
    min_answer_similarity: float | None = Field(
        default=None, ge=0.0, le=1.0, description="smallest mean similarity (0..1) of greedy answers to full's")

    @model_validator(mode="after")
    def _check_any(self) -> QualityBound:
        if all(v is None for v in vars(self).values()):
            raise ValueError("max_quality_loss needs at least one of " + ", ".join(type(self).model_fields))
        return self


class ShadowSetting(_Strict):
    """Online check of served hits against fresh backend answers (controller.shadow)."""

    fraction: float = Field(default=0.0, ge=0.0, le=1.0, description="share of would-be hits also sent to the backend")
    min_answer_similarity: float = Field(
        default=0.9, ge=0.0, le=1.0, description="fresh and cached answers at least this alike (embeddings) agree",
    )


class CategoryPolicy(_Strict):
    """How the cache treats one category."""

    similarity_threshold: float = Field(
        ge=0.0, le=1.0, description="cosine similarity for a candidate (the verifier then decides)"
    )
    max_false_hit_rate: float | None = Field(
        default=None, gt=0.0, lt=1.0,
        description="error bound: share of different questions that may get a cached answer; "
        "`calibrate-cache` sets similarity_threshold and verifier to meet it",
    )
    verifier: VerifierSetting = Field(default_factory=VerifierSetting)
    shadow: ShadowSetting = Field(
        default_factory=ShadowSetting,
        description="shadow checks; with max_false_hit_rate, a category that exceeds it tightens itself",
    )
    ttl_seconds: int = Field(gt=0, description="lifetime of an entry (Redis native TTL)")
    max_entries: int = Field(gt=0, description="quota: entries kept before eviction")
    cacheable: bool = True
    cache_sampled: bool = Field(
        default=False, description="also cache requests with temperature > 0"
    )
    compute_profile: str = Field(default="full", min_length=1)
    max_quality_loss: QualityBound | None = Field(
        default=None, description="bound on compute_profile and every load.profile_ladder step, checked against "
        "the per-category figures of the `compute_profiles` file at start-up and reload",
    )
    load: LoadResponse = Field(default_factory=LoadResponse)

    @model_validator(mode="after")
    def _check_load(self) -> CategoryPolicy:
        floor = self.load.threshold_floor
        if floor is not None and floor > self.similarity_threshold:
            raise ValueError(f"load.threshold_floor {floor} is above similarity_threshold {self.similarity_threshold}")
        if self.load.ttl_max_seconds is not None and self.load.ttl_max_seconds < self.ttl_seconds:
            raise ValueError("load.ttl_max_seconds is below ttl_seconds")
        measured, bound = self.verifier.measured, self.max_false_hit_rate
        if measured is not None and bound is not None and measured.false_hit_upper > bound:
            raise ValueError(
                f"verifier.measured.false_hit_upper {measured.false_hit_upper} exceeds max_false_hit_rate "
                f"{bound}: re-run `adaptive-controller calibrate-cache`"
            )
        return self


class Category(_Strict):
    """A named class of queries, recognised by examples (embeddings) and/or keywords."""

    name: str = Field(min_length=1, pattern=r"^[a-z0-9_][a-z0-9_-]*$")
    description: str = ""
    examples: list[str] = Field(default_factory=list)
    keywords: list[str] = Field(default_factory=list)
    policy: CategoryPolicy


class LoadPolicy(_Strict):
    """How backend load is scored and turned into discrete load levels (with hysteresis)."""

    weight_waiting: float = Field(default=1.0, ge=0)
    weight_running: float = Field(default=0.25, ge=0)
    weight_kv_usage: float = Field(default=4.0, ge=0, description="per unit of KV-cache usage (0..1)")
    saturation_score: float = Field(default=8.0, gt=0, description="load score that counts as fully loaded")
    level_thresholds: list[float] = Field(
        default_factory=lambda: [0.5, 0.75, 0.9], min_length=1,
        description="pressure (score / saturation, 0..1) at which each load level starts",
    )
    hysteresis: float = Field(default=0.1, ge=0, le=0.5, description="pressure drop needed to step back down")
    scrape_interval_seconds: float = Field(default=2.0, gt=0)
    stale_after_seconds: float = Field(default=10.0, gt=0, description="silent backends count as saturated")

    @model_validator(mode="after")
    def _check_levels(self) -> LoadPolicy:
        t = self.level_thresholds
        if any(not 0 < x <= 1 for x in t) or t != sorted(t):
            raise ValueError("level_thresholds must be increasing values in (0, 1]")
        return self


class ClassifierSettings(_Strict):
    """A learned category classifier (train with `adaptive-controller train-classifier`)."""

    weights: str = Field(min_length=1, description="weights file (.npz); relative to the policy file's folder")
    confidence_floor: float = Field(
        default=0.6, ge=0.0, le=1.0,
        description="below this top probability a query goes to default_category (the strictest)",
    )


class PolicyConfig(_Strict):
    """The whole policy file."""

    version: int = Field(default=1, ge=1, le=1)
    default_category: str
    tenant_header: str = Field(
        default="authorization",
        description="header whose value partitions the cache (default: the Bearer API key)",
    )
    history_window: int = Field(
        default=4, ge=0, description="preceding chat turns that are part of the cache key"
    )
    min_category_similarity: float = Field(
        default=0.3, ge=-1.0, le=1.0,
        description="below this centroid similarity a query falls to default_category",
    )
    load_policy: LoadPolicy = Field(default_factory=LoadPolicy)
    compute_profiles: str | None = Field(
        default=None, min_length=1, description="profile file (from `vllm-adaptive calibrate --category-data`) "
        "whose per-category figures max_quality_loss is checked against; relative to the policy file's folder",
    )
    classifier: ClassifierSettings | None = Field(
        default=None, description="learned classifier; without it, example centroids decide",
    )
    categories: list[Category] = Field(min_length=1)

    @model_validator(mode="after")
    def _check_names(self) -> PolicyConfig:
        names = [c.name for c in self.categories]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate category names: {', '.join(dupes)}")
        if self.default_category not in names:
            raise ValueError(
                f"default_category {self.default_category!r} is not one of: {', '.join(names)}"
            )
        for cat in self.categories:
            if cat.name != self.default_category and not (cat.examples or cat.keywords):
                raise ValueError(
                    f"category {cat.name!r} needs examples or keywords to be recognised"
                )
        return self

    def category(self, name: str) -> Category:
        """The category called `name` (KeyError if unknown)."""
        for cat in self.categories:
            if cat.name == name:
                return cat
        raise KeyError(name)


#: The fields that name files, relative to the policy file's folder: a copy of the file written
#: elsewhere (a benchmark's variant) must rebase them (`rebased`).
PATH_FIELDS: tuple[tuple[str, ...], ...] = (("compute_profiles",), ("classifier", "weights"))


def rebased(doc: dict[str, Any], folder: str) -> dict[str, Any]:
    """`doc` (a parsed policy file) with its relative file paths joined to `folder`, so that it can
    be written anywhere; pure (no file is read)."""
    out = copy.deepcopy(doc)
    for path in PATH_FIELDS:
        *parents, leaf = path
        node = out
        for key in parents:
            node = node.get(key) if isinstance(node, dict) else None
        if isinstance(node, dict) and isinstance(node.get(leaf), str) and not node[leaf].startswith("/"):
            node[leaf] = f"{folder.rstrip('/')}/{node[leaf]}"
    return out


def _node_line(root: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at `loc` (or of its deepest existing parent)."""
    node, line = root, (root.start_mark.line + 1 if root is not None else None)
    for key in loc:
        child = None
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if k.value == key:
                    child, line = v, k.start_mark.line + 1
                    break
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int):
            if 0 <= key < len(node.value):
                child = node.value[key]
                line = child.start_mark.line + 1
        if child is None:
            break
        node = child
    return line


def field_line(text: str, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the field at `loc` in YAML `text` (for errors found after parsing)."""
    try:
        return _node_line(yaml.compose(text, Loader=yaml.SafeLoader), loc)
    except yaml.YAMLError:
        return None


def _field_path(loc: tuple[Any, ...], data: Any) -> str:
    """`categories[2].policy.ttl_seconds`, with category names where known."""
    parts: list[str] = []
    cursor = data
    for key in loc:
        if isinstance(key, int):
            name = cursor[key].get("name") if isinstance(cursor, list) and isinstance(
                cursor[key], dict
            ) else None
            parts[-1:] = [f"{parts[-1] if parts else ''}[{key}{'=' + name if name else ''}]"]
        else:
            parts.append(str(key))
        try:
            cursor = cursor[key]
        except (KeyError, IndexError, TypeError):
            cursor = None
    return ".".join(parts)


def parse_policies(text: str, source: str = "<policies>") -> PolicyConfig:
    """Validate policy YAML `text`; raise :class:`PolicyError` naming `source`, line and field."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PolicyError(source, [(line, "", f"not valid YAML: {exc}")]) from None
    if not isinstance(data, dict):
        raise PolicyError(source, [(1, "", "expected a mapping at the top level")])
    try:
        return PolicyConfig.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = tuple(err["loc"])
            problems.append((_node_line(root, loc), _field_path(loc, data), err["msg"]))
        raise PolicyError(source, problems) from None


def located_error(text: str, source: str, problems: list[tuple[tuple[Any, ...], str]]) -> PolicyError:
    """A PolicyError for problems found in a valid document by a later check (`loc`: path of the
    offending field), with the same file:line: field naming as a schema error."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    data = yaml.safe_load(text)
    return PolicyError(source, [(_node_line(root, loc), _field_path(loc, data), msg) for loc, msg in problems])
