"""Skip-profile files: named sets of decoder layers to skip, with their measured quality.

The file is portable JSON written by `vllm-adaptive calibrate` (or by hand)::

    {"format": "vllm-adaptive/profiles-v1",
     "model": {"architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576},
     "default": "full",
     "profiles": {"full": {"skip": []},
                  "fast": {"skip": [12, 17], "strategy": "calibrated", "quality": {...}},
                  "lean": {"skip": [12, 17], "kv": {"0": "full", "3": 512, "4": 512}}}}

A profile's optional `kv` gives layers a KV budget: `"full"`, a number of tokens (the layer
keeps a sliding window of that many recent tokens) or `"none"`; either a list with one entry
per layer or an object {layer: budget} (unnamed layers: full). A skipped layer always has
`"none"`. vLLM sizes its KV pool once, at start-up, so the *default* profile's budgets are
the engine's KV layout (see vllm_adaptive.kv); profiles that would run a layer the layout
gives no KV are not served by that engine.

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
    #: KV budget per layer: None = full, 0 = none (skipped), n = window of the n latest tokens.
    kv: tuple[int | None, ...] | None = None

    def kv_budgets(self, num_layers: int) -> tuple[int | None, ...]:
        """Budget of every layer, skipped layers none, unnamed ones full."""
        kv = self.kv or (None,) * num_layers
        return tuple(0 if i in self.skip else kv[i] for i in range(num_layers))


@dataclass(frozen=True)
class ProfileSet:
    """All profiles of one model, by name; `full` (skip nothing) always exists."""

    num_layers: int
    default: str
    profiles: dict[str, Profile]

    def get(self, name: str | None) -> Profile:
        """The profile called `name` (the default for None); KeyError if unknown."""
        return self.profiles[self.default if name is None else name]

    @property
    def kv_layout(self) -> tuple[int | None, ...]:
        """The engine's KV budget per layer: the default profile's."""
        return self.get(None).kv_budgets(self.num_layers)

    def with_default(self, name: str, source: str = "profiles") -> tuple[ProfileSet, list[str]]:
        """This set served with default `name`; also the names dropped because they would run
        a layer that the new default's KV layout leaves without KV."""
        if name not in self.profiles:
            raise ProfileError(f"default profile {name!r} is not in {source} (has {sorted(self.profiles)})")
        no_kv = {i for i, b in enumerate(self.profiles[name].kv_budgets(self.num_layers)) if b == 0}
        kept = {n: p for n, p in self.profiles.items() if no_kv <= p.skip}
        return ProfileSet(self.num_layers, name, kept), sorted(set(self.profiles) - set(kept))

    def to_json(self) -> dict[str, Any]:
        return {
            "default": self.default,
            "kv_layout": [kv_json(b) for b in self.kv_layout],
            "profiles": {
                n: {"skip": sorted(p.skip), "strategy": p.strategy, "quality": p.quality}
                | ({"kv": [kv_json(b) for b in p.kv]} if p.kv else {})
                for n, p in self.profiles.items()
            },
        }


def kv_json(budget: int | None) -> str | int:
    """A layer budget as the profile file writes it."""
    return "full" if budget is None else "none" if budget == 0 else budget


def parse_kv(raw: Any, num_layers: int, skip: frozenset[int], where: str) -> tuple[int | None, ...]:
    """Per-layer KV budgets from a list (one per layer) or an object {layer: budget}."""
    if isinstance(raw, list):
        if len(raw) != num_layers:
            raise ProfileError(f"{where} lists {len(raw)} budgets; the model has {num_layers} layers")
        named = dict(enumerate(raw))
    elif isinstance(raw, dict):
        named = {}
        for key, value in raw.items():
            if not (isinstance(key, str) and key.isdigit()) or int(key) >= num_layers:
                raise ProfileError(f"{where} names layer {key!r}, which does not exist (layers 0..{num_layers - 1})")
            named[int(key)] = value
    else:
        raise ProfileError(f"{where} must be a list of per-layer budgets or an object {{layer: budget}}")
    out: list[int | None] = [None] * num_layers
    for layer, value in named.items():
        if value == "full":
            budget = None
        elif value == "none":
            budget = 0
        elif isinstance(value, int) and not isinstance(value, bool) and value >= 1:
            budget = value
        else:
            raise ProfileError(f"{where}[{layer}] is {value!r}; use \"full\", \"none\" or a number of tokens >= 1")
        if budget == 0 and layer not in skip:
            raise ProfileError(f"{where}[{layer}] is \"none\" but the profile runs layer {layer} (only skipped layers may have no KV)")
        if budget != 0 and layer in skip and layer in named:
            raise ProfileError(f"{where}[{layer}] is {value!r} but the profile skips layer {layer}; a skipped layer keeps no KV (\"none\")")
        out[layer] = budget
    return tuple(0 if i in skip else b for i, b in enumerate(out))


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
        kv = None
        if spec.get("kv") is not None:
            try:
                kv = parse_kv(spec["kv"], num_layers, frozenset(skip), f"profiles.{name}.kv")
            except ProfileError as exc:
                raise fail(str(exc)) from None
        profiles[name] = Profile(name, frozenset(skip), spec.get("strategy", "manual"), spec.get("quality", {}), kv)
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
