"""Skip-profile files: named sets of decoder layers to skip, with their measured quality.

The file is portable JSON written by `vllm-adaptive calibrate` (or by hand)::

    {"format": "vllm-adaptive/profiles-v1",
     "model": {"architecture": "LlamaForCausalLM", "num_layers": 30, "hidden_size": 576},
     "default": "full",
     "profiles": {"full": {"skip": []},
                  "fast": {"skip": [12, 17], "strategy": "calibrated", "quality": {...}},
                  "lean": {"skip": [12, 17], "kv": {"0": "full", "3": 512, "4": 512}}}}

A profile's optional `kv` gives layers a KV budget: `"full"`, a number of tokens (the layer
keeps a sliding window of that many recent tokens), `{"sink": S, "window": W}` (the first S tokens
and the latest W) or `"none"`; either a list with one entry
per layer or an object {layer: budget} (unnamed layers: full). A skipped layer always has
`"none"`. vLLM sizes its KV pool once, at start-up, so the *default* profile's budgets are
the engine's KV layout (see vllm_adaptive.kv); profiles that would run a layer the layout
gives no KV are not served by that engine.

`ProfileSet` is the file's only reader (`ProfileSet.load` / `ProfileSet.parse`) and only
writer (`to_document` / `dump`): calibrate, the plugin, the bench and the tests all go through
it, so a file one of them writes is a file the others accept. In memory a budget is
`KV.FULL`, `KV.NONE`, a window of n tokens or a `SinkWindow` (vllm_adaptive.kv.layout).

Validation is pure (no vLLM import) so the launcher, the worker and the tests share it;
a file that does not match the served model is refused with a message that says why.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from vllm_adaptive.kv.layout import KV, Budget, SinkWindow, budget_json

FORMAT = "vllm-adaptive/profiles-v1"
FULL = "full"
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


class ProfileError(ValueError):
    """A profile file that cannot be used with this model."""


@dataclass(frozen=True)
class ModelSpec:
    """What a profile file is valid for: skip sets and budgets are per architecture and depth."""

    architecture: str
    num_layers: int
    hidden_size: int
    name: str | None = None  # informative only (not checked)

    @classmethod
    def from_folder(cls, folder: str | Path) -> ModelSpec:
        """The spec of a local HF model folder (its config.json)."""
        cfg = json.loads((Path(folder) / "config.json").read_text())
        return cls(cfg["architectures"][0], cfg["num_hidden_layers"], cfg["hidden_size"], Path(folder).name)

    def to_json(self) -> dict[str, Any]:
        keys = {"architecture": self.architecture, "num_layers": self.num_layers, "hidden_size": self.hidden_size}
        return keys | ({"name": self.name} if self.name else {})


@dataclass(frozen=True)
class Profile:
    """One named skip set, optionally with per-layer KV budgets and measured quality."""

    name: str
    skip: frozenset[int] = frozenset()
    strategy: str = "manual"
    quality: dict[str, Any] = field(default_factory=dict)
    #: KV budget per layer as given in the file (empty: every running layer full).
    kv: tuple[Budget, ...] = ()
    #: KV a long sequence holds relative to full KV (written by calibrate for KV allocations).
    kv_fraction: float | None = None
    #: Quality measured on each traffic category's own prompts and answers (`calibrate
    #: --category-data`): category -> figure -> value, beside the global `quality`.
    categories: dict[str, dict[str, float]] = field(default_factory=dict)

    def kv_budgets(self, num_layers: int) -> tuple[Budget, ...]:
        """Budget of every layer, skipped layers none, unnamed ones full."""
        kv = self.kv or (KV.FULL,) * num_layers
        return tuple(KV.NONE if i in self.skip else kv[i] for i in range(num_layers))

    def to_json(self) -> dict[str, Any]:
        """This profile's entry in the file."""
        out: dict[str, Any] = {"skip": sorted(self.skip), "strategy": self.strategy}
        if self.kv:
            out["kv"] = [budget_json(b) for b in self.kv]
        if self.kv_fraction is not None:
            out["kv_fraction"] = self.kv_fraction
        out["quality"] = self.quality
        return out | ({"categories": self.categories} if self.categories else {})


@dataclass(frozen=True)
class ProfileSet:
    """All profiles of one model, by name; `full` (skip nothing) always exists.

    `sections` carries the calibration records (metrics, settings, refusals) that the file keeps
    beside the profiles; they are written back unchanged and never validated."""

    model: ModelSpec
    default: str
    profiles: dict[str, Profile]
    sections: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, model: ModelSpec, profiles: Sequence[Profile], default: str = FULL,
           sections: Mapping[str, Any] | None = None) -> ProfileSet:
        """A set from profiles built in code (`full` added when missing), validated like a file."""
        table = {FULL: Profile(FULL, strategy="none")} | {p.name: p for p in profiles}
        return cls.parse(cls(model, default, table, dict(sections or {})).to_document(), "<profiles>", model)

    @property
    def num_layers(self) -> int:
        return self.model.num_layers

    def get(self, name: str | None) -> Profile:
        """The profile called `name` (the default for None); KeyError if unknown."""
        return self.profiles[self.default if name is None else name]

    @property
    def kv_layout(self) -> tuple[Budget, ...]:
        """The engine's KV budget per layer: the default profile's."""
        return self.get(None).kv_budgets(self.num_layers)

    def with_default(self, name: str, source: str = "profiles") -> tuple[ProfileSet, list[str]]:
        """This set served with default `name`; also the names dropped because they would run
        a layer that the new default's KV layout leaves without KV."""
        if name not in self.profiles:
            raise ProfileError(f"default profile {name!r} is not in {source} (has {sorted(self.profiles)})")
        no_kv = {i for i, b in enumerate(self.profiles[name].kv_budgets(self.num_layers)) if b is KV.NONE}
        kept = {n: p for n, p in self.profiles.items() if no_kv <= p.skip}
        return replace(self, default=name, profiles=kept), sorted(set(self.profiles) - set(kept))

    def only(self, names: Sequence[str], source: str = "profiles") -> ProfileSet:
        """This set limited to `names` (the default always kept); unknown names are refused."""
        unknown = sorted(set(names) - set(self.profiles))
        if unknown:
            raise ProfileError(f"profiles {unknown} to serve are not in {source} (or not servable with default "
                               f"{self.default!r}); it has {sorted(self.profiles)}")
        return replace(self, profiles={n: p for n, p in self.profiles.items() if n in names or n == self.default})

    def to_json(self) -> dict[str, Any]:
        """What the engine serves (the plugin's status route): default, KV layout, profiles."""
        return {
            "default": self.default,
            "kv_layout": [budget_json(b) for b in self.kv_layout],
            "profiles": {n: p.to_json() for n, p in self.profiles.items()},
        }

    def to_document(self) -> dict[str, Any]:
        """The profile file's JSON document."""
        return {"format": FORMAT, "model": self.model.to_json(), "default": self.default,
                "profiles": {n: p.to_json() for n, p in self.profiles.items()}} | self.sections

    def dump(self, path: str | Path) -> Path:
        """Write the profile file (folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_document(), indent=1))
        return path

    @classmethod
    def parse(cls, doc: Any, source: str, model: ModelSpec | None = None) -> ProfileSet:
        """Validate a profile document; against `model` when given (else against its own model block)."""
        return _parse(doc, source, model)

    @classmethod
    def load(cls, path: str | Path, model: ModelSpec | None = None) -> ProfileSet:
        """Read and validate a profile file."""
        path = Path(path)
        try:
            doc = json.loads(path.read_text())
        except OSError as exc:
            raise ProfileError(f"{path}: cannot read profile file: {exc.strerror}") from None
        except ValueError as exc:
            raise ProfileError(f"{path}: not valid JSON: {exc}") from None
        return _parse(doc, str(path), model)


def parse_kv(raw: Any, num_layers: int, skip: frozenset[int], where: str) -> tuple[Budget, ...]:
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
    out: list[Budget] = [KV.FULL] * num_layers
    for layer, value in named.items():
        budget: Budget
        if value in (KV.FULL.value, KV.NONE.value):
            budget = KV(value)
        elif _count(value):
            budget = value
        elif isinstance(value, dict) and set(value) == {"sink", "window"} and all(map(_count, value.values())):
            budget = SinkWindow(value["sink"], value["window"])
        else:
            raise ProfileError(f"{where}[{layer}] is {value!r}; use \"full\", \"none\", a number of tokens >= 1 "
                               "or {\"sink\": S, \"window\": W} (both >= 1)")
        if budget is KV.NONE and layer not in skip:
            raise ProfileError(f"{where}[{layer}] is \"none\" but the profile runs layer {layer} (only skipped layers may have no KV)")
        if budget is not KV.NONE and layer in skip and layer in named:
            raise ProfileError(f"{where}[{layer}] is {value!r} but the profile skips layer {layer}; a skipped layer keeps no KV (\"none\")")
        out[layer] = budget
    return tuple(KV.NONE if i in skip else b for i, b in enumerate(out))


def _count(value: Any) -> bool:
    """Whether a JSON value is a whole number of tokens >= 1 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _model_spec(raw: Any, fail) -> ModelSpec:
    """The file's own model block (when no served model is given to check it against)."""
    keys = ("architecture", "num_layers", "hidden_size")
    if not isinstance(raw, dict) or not isinstance(raw.get("architecture"), str) or not all(
        _count(raw.get(k)) for k in keys[1:]
    ):
        raise fail(f"'model' must name {', '.join(keys)} (got {raw!r})")
    return ModelSpec(raw["architecture"], raw["num_layers"], raw["hidden_size"], raw.get("name"))


def _parse(doc: Any, source: str, served: ModelSpec | None) -> ProfileSet:
    def fail(msg: str) -> ProfileError:
        return ProfileError(f"{source}: {msg}")

    if not isinstance(doc, dict):
        raise fail("a profile file is a JSON object")
    if doc.get("format") != FORMAT:
        raise fail(f"'format' must be {FORMAT!r}, got {doc.get('format')!r}")
    model = doc.get("model") or {}
    if served is not None:
        expected = {"architecture": served.architecture, "num_layers": served.num_layers,
                    "hidden_size": served.hidden_size}
        for key, value in expected.items():
            if model.get(key) != value:
                raise fail(
                    f"written for a different model: model.{key} is {model.get(key)!r} but the served "
                    f"model has {value!r} (profiles are per model; run `vllm-adaptive calibrate` for it)"
                )
    spec = _model_spec(model, fail)
    num_layers = spec.num_layers
    raw = doc.get("profiles")
    if not isinstance(raw, dict) or not raw:
        raise fail("'profiles' must be a non-empty object of name -> {\"skip\": [layer, ...]}")
    profiles = {FULL: Profile(FULL, frozenset(), "none")}
    for name, entry in raw.items():
        if not _NAME.match(name):
            raise fail(f"profile name {name!r} may only use letters, digits, '_', '-', '.'")
        skip = entry.get("skip") if isinstance(entry, dict) else None
        if not isinstance(skip, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in skip):
            raise fail(f"profiles.{name}.skip must be a list of layer indices")
        bad = sorted(i for i in skip if not 0 <= i < num_layers)
        if bad:
            raise fail(f"profiles.{name}.skip has layers {bad} out of range 0..{num_layers - 1}")
        if len(set(skip)) == num_layers:
            raise fail(f"profiles.{name} skips every layer")
        if name == FULL and skip:
            raise fail("profile 'full' must skip nothing")
        kv: tuple[Budget, ...] = ()
        if entry.get("kv") is not None:
            try:
                kv = parse_kv(entry["kv"], num_layers, frozenset(skip), f"profiles.{name}.kv")
            except ProfileError as exc:
                raise fail(str(exc)) from None
        categories = entry.get("categories", {})
        if not isinstance(categories, dict) or not all(isinstance(v, dict) for v in categories.values()):
            raise fail(f"profiles.{name}.categories must be an object {{category: {{figure: value}}}}")
        profiles[name] = Profile(name, frozenset(skip), entry.get("strategy", "manual"), entry.get("quality", {}),
                                 kv, entry.get("kv_fraction"), categories)
    default = doc.get("default", FULL)
    if default not in profiles:
        raise fail(f"default profile {default!r} is not one of {sorted(profiles)}")
    sections = {k: v for k, v in doc.items() if k not in ("format", "model", "default", "profiles")}
    return ProfileSet(spec, default, profiles, sections)
