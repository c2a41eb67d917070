"""The policy in force: an immutable snapshot, built once per load and swapped in one assignment.

A request reads the snapshot once and sees one consistent policy (config, classifier, category
names, derived values) for its whole life, even if a reload lands in the middle of it.
No FastAPI, Redis or hnswlib here: `adaptive-controller check` uses `load_policies` alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from controller import compute_profiles
from controller.classifier import Classifier, ClassifierError
from controller.embeddings import Encoder
from policies.load import Decision, decide
from policies.schema import CategoryPolicy, PolicyConfig, PolicyError, field_line, parse_policies


def load_policies(path: Path) -> PolicyConfig:
    """Read and validate a policy file (errors name the file, line and field)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(str(path), [(None, "", f"cannot read: {exc.strerror}")]) from None
    return parse_policies(text, str(path))


@dataclass(frozen=True)
class PolicySnapshot:
    """One validated policy file and everything derived from it."""

    source: Path
    config: PolicyConfig
    classifier: Classifier
    categories: frozenset[str]

    @property
    def levels(self) -> int:
        """Number of load levels above normal (0 .. levels)."""
        return len(self.config.load_policy.level_thresholds)

    def policy(self, category: str) -> CategoryPolicy:
        """The policy of a category of this snapshot (KeyError if it has no such category)."""
        return self.config.category(category).policy

    def decision(self, category: str, level: int) -> Decision:
        """The category's threshold, TTL and compute profile at load `level` (clamped to this policy)."""
        return decide(self.policy(category), min(level, self.levels), self.levels)


def build_snapshot(path: Path, encoder: Encoder) -> PolicySnapshot:
    """Load, validate and derive; raises PolicyError and builds nothing on an invalid file (or one
    whose categories would run a compute profile beyond their max_quality_loss)."""
    config = load_policies(path)
    compute_profiles.check(config, path)
    try:  # the classifier's weights are re-read on every load: a reload picks up new ones
        classifier = Classifier(config, encoder, path.parent)
    except ClassifierError as exc:
        field = ("classifier", "weights")
        raise PolicyError(str(path), [(field_line(path.read_text(), field), ".".join(field), str(exc))]) from None
    return PolicySnapshot(path, config, classifier, frozenset(c.name for c in config.categories))
