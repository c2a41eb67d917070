"""Skip-profile files: named sets of decoder layers to skip, with their measured quality.

The file is portable JSON written by `vllm-adaptive calibrate` (or by hand)::

    {"format": "vllm-adaptive/profiles-v1",
     "model": {"architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576},
     "default": "full",
     "profiles": {"full": {"skip": []},
                  "fast": {"skip": [12, 17], "strategy": "calibrated", "quality": {...}}}}

Validation is pure (no vLLM import) so the launcher, the worker and the tests share it;
a file that does not match the served model is refused with a message that says why.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "vllm-adaptive/profiles-v1"
FULL = "full"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProfileError(ValueError):
    """A profile file that cannot be used with this model."""


@dataclass(frozen=True)
class Profile:
    """One named skip set."""

    name: str
    skip: frozenset[int]
    strategy: str = "manual"
    quality: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProfileSet:
    """All profiles of one model, by name; `full` (skip nothing) always exists."""

    num_layers: int
    default: str
    profiles: dict[str, Profile]

    def get(self, name: str | None) -> Profile:
        """The profile called `name` (the default for None); KeyError if unknown."""
        return self.profiles[self.default if name is None else name]

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "profiles": {
                n: {"skip": sorted(p.skip), "strategy": p.strategy, "quality": p.quality}
                for n, p in self.profiles.items()
            },
        }


def parse(doc: dict[str, Any], source: str, architecture: str, num_layers: int, hidden_size: int) -> ProfileSet:
    """Validate a profile document against the served model."""
    def fail(msg: str) -> ProfileError:
        return ProfileError(f"{source}: {msg}")

    if doc.get("format") != FORMAT:
        raise fail(f"'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    model = doc.get("model") or {}
    expected = {"architecture": architecture, "num_layers": num_layers, "hidden_size": hidden_size}
    for key, value in expected.items():
        if model.get(key) != value:
            raise fail(
                f"written for a different model: model.{key} is {model.get(key)!r} but the served "
                f"model has {value!r} (profiles are per model; run `vllm-adaptive calibrate` for it)"
            )
    raw = doc.get("profiles")
    if not isinstance(raw, dict) or not raw:
        raise fail("'profiles' must be a non-empty object of name -> {\"skip\": [layer, ...]}")
    profiles = {FULL: Profile(FULL, frozenset(), "none")}
    for name, spec in raw.items():
        if not _NAME.match(name):
            raise fail(f"profile name {name!r} may only use letters, digits, '_', '-', '.'")
        skip = spec.get("skip") if isinstance(spec, dict) else None
        if not isinstance(skip, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in skip):
            raise fail(f"profiles.{name}.skip must be a list of layer indices")
        bad = sorted(i for i in skip if not 0 <= i < num_layers)
        if bad:
            raise fail(f"profiles.{name}.skip has layers {bad} out of range 0..{num_layers - 1}")
        if len(set(skip)) == num_layers:
            raise fail(f"profiles.{name} skips every layer")
        if name == FULL and skip:
            raise fail("profile 'full' must skip nothing")
        profiles[name] = Profile(name, frozenset(skip), spec.get("strategy", "manual"), spec.get("quality", {}))
    default = doc.get("default", FULL)
    if default not in profiles:
        raise fail(f"default profile {default!r} is not one of {sorted(profiles)}")
    return ProfileSet(num_layers, default, profiles)


def load(path: str | Path, architecture: str, num_layers: int, hidden_size: int) -> ProfileSet:
    """Read and validate a profile file."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except OSError as exc:
        raise ProfileError(f"{path}: cannot read profile file: {exc.strerror}") from None
    except ValueError as exc:
        raise ProfileError(f"{path}: not valid JSON: {exc}") from None
    return parse(doc, str(path), architecture, num_layers, hidden_size)
