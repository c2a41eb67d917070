"""`vllm-adaptive calibrate`: measure layer importance on real text and write a skip-profile file.

Runs the model with transformers on the CPU (same weights vLLM serves):
1. per-layer metrics on calibration text: block influence 1-cos(h_in, h_out) (ShortGPT),
   relative L2 change ||h_out-h_in||/||h_in|| (LAC), and ΔPPL when the layer alone is removed;
2. skip sets for each budget and strategy (balanced, calibrated, random);
3. quality of each set on *held-back* text: perplexity, ΔPPL, top-1 next-token agreement
   and KL(full || skipped) against the full model;
4. KV budgets: each layer's sensitivity to having its KV cut to a short window (ΔPPL on long
   calibration chunks when that layer alone attends to only the last `probe` tokens), per-layer
   budgets from each allocation strategy (uniform, pyramid, sensitivity) at each fraction of a
   full context's KV, and their quality on long held-back chunks. A window here is the same
   computation as vLLM's sliding window (each query sees the last W positions of that layer).
Profiles worse than the quality floor (--max-ppl-increase) are refused, with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vllm_adaptive import category_data, envs, kv, profiles
from vllm_adaptive.skip import STRATEGIES

CHUNK = 256


def pydoc_text(part: str) -> str:
    """Python's own documentation (pydoc_data.topics): even topics calibrate, odd ones evaluate."""
    from pydoc_data.topics import topics

    keys = sorted(topics)
    pick = keys[0::2] if part == "calib" else keys[1::2]
    return "\n\n".join(topics[k] for k in pick)


def read_text(spec: str) -> str:
    """`pydoc:calib`, `pydoc:eval` or a text file path."""
    if spec.startswith("pydoc:"):
        return pydoc_text(spec.split(":", 1)[1])
    return Path(spec).read_text()


def chunks(tokenizer, text: str, n: int, size: int = CHUNK) -> list[torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    out = [ids[i : i + size] for i in range(0, len(ids) - size, size)]
    if len(out) < n:
        raise ValueError(f"text too short: {len(out)} chunks of {size} tokens, {n} needed")
    step = len(out) // n  # spread over the text, not just its beginning
    return [out[i * step] for i in range(n)]


class SkippableModel:
    """A transformers causal LM whose decoder layers can be left out per call."""

    def __init__(self, folder: Path) -> None:
        envs.set_offline()
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
        self.layers = self.model.model.layers
        self.num_layers = len(self.layers)

    def logits(self, ids: torch.Tensor, skip: Iterable[int] = (), windows: dict[int, int] | None = None) -> torch.Tensor:
        """Next-token logits with `skip` left out and layer i attending to its last windows[i] tokens."""
        skip = set(skip)
        self.model.model.layers = nn.ModuleList([l for i, l in enumerate(self.layers) if i not in skip])
        handles = [self.layers[i].register_forward_pre_hook(_window_hook(w), with_kwargs=True)
                   for i, w in (windows or {}).items() if w < len(ids) and i not in skip]
        try:
            with torch.inference_mode():
                return self.model(ids[None], use_cache=False).logits[0].float()
        finally:
            self.model.model.layers = self.layers
            for h in handles:
                h.remove()

    def nll(self, data: list[torch.Tensor], skip: Iterable[int] = (), windows: dict[int, int] | None = None) -> float:
        """Mean next-token negative log-likelihood over `data`."""
        total, count = 0.0, 0
        for ids in data:
            logp = torch.log_softmax(self.logits(ids, skip, windows)[:-1], -1)
            total += -logp.gather(1, ids[1:, None]).sum().item()
            count += len(ids) - 1
        return total / count


    def greedy(self, ids: torch.Tensor, new_tokens: int, variant: Variant, stop: int | None) -> list[int]:
        """Greedy continuation of `ids` (KV-cached) under `variant`: a skipped layer passes its input
        through (same result as leaving it out, and every layer keeps a cache slot)."""
        from transformers import DynamicCache

        windows = dict(variant.windows)
        handles = [self.layers[i].register_forward_hook(_identity_hook) for i in variant.skip]
        handles += [self.layers[i].register_forward_pre_hook(_window_hook(w), with_kwargs=True)
                    for i, w in windows.items() if i not in variant.skip]
        out: list[int] = []
        try:
            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                step = ids[None]
                for _ in range(new_tokens):
                    logits = self.model(step, past_key_values=cache, use_cache=True).logits
                    token = int(logits[0, -1].argmax())
                    out.append(token)
                    if token == stop:
                        break
                    step = torch.tensor([[token]])
        finally:
            for h in handles:
                h.remove()
        return out


def _identity_hook(module, args, output):
    """Forward hook: the layer's output is its input (the layer is skipped)."""
    return args[0]


def _window_hook(window: int):
    """Pre-hook giving one decoder layer a sliding-window causal mask (query at position p sees
    positions p-window+1..p), for a whole sequence or a KV-cached step alike."""
    def hook(module, args, kwargs):
        q = kwargs["position_ids"][0]
        k = torch.arange(int(q[-1]) + 1, device=q.device)
        mask = ((k[None, :] <= q[:, None]) & (q[:, None] - k[None, :] < window))[None, None]
        return args, {**kwargs, "attention_mask": mask}
    return hook


def layer_metrics(m: SkippableModel, data: list[torch.Tensor]) -> dict[str, list[float]]:
    """Block influence, relative L2 change and single-layer ΔPPL (%) of every layer."""
    sums = {"block_influence": [0.0] * m.num_layers, "l2_change": [0.0] * m.num_layers}
    count = 0
    captured: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(idx):
        def fn(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            captured[idx] = (h_in[0].float(), h_out[0].float())
        return fn

    handles = [layer.register_forward_hook(hook(i), with_kwargs=True) for i, layer in enumerate(m.layers)]
    try:
        for ids in data:
            m.logits(ids)
            for i, (h_in, h_out) in captured.items():
                sums["block_influence"][i] += (1 - torch.cosine_similarity(h_in, h_out, dim=-1)).sum().item()
                sums["l2_change"][i] += ((h_out - h_in).norm(dim=-1) / h_in.norm(dim=-1).clamp_min(1e-6)).sum().item()
            count += len(ids)
    finally:
        for h in handles:
            h.remove()
    out = {k: [v / count for v in vals] for k, vals in sums.items()}
    base = math.exp(m.nll(data))
    out["delta_ppl"] = [
        100 * (math.exp(m.nll(data, [i])) / base - 1) for i in tqdm(range(m.num_layers), desc="ΔPPL per layer")
    ]
    return out


@dataclass
class Quality:
    ppl: float
    delta_ppl_pct: float
    top1_agreement: float
    kl: float


@dataclass(frozen=True)
class Variant:
    """A model variant to evaluate: layers left out and per-layer KV windows."""

    skip: frozenset[int] = frozenset()
    windows: tuple[tuple[int, int], ...] = ()

    @classmethod
    def of(cls, profile: profiles.Profile) -> Variant:
        """The computation a profile's file entry describes (its skip set and token windows)."""
        return cls(profile.skip, tuple((i, b) for i, b in enumerate(profile.kv) if isinstance(b, int)))

    def changes(self, length: int) -> bool:
        """Whether a sequence of `length` tokens computes differently from the full model."""
        return bool(self.skip) or any(w < length for _, w in self.windows)


def evaluate(m: SkippableModel, data: list[torch.Tensor], variants: dict[str, Variant],
             first: list[int] | None = None, desc: str = "held-back evaluation") -> dict[str, Quality]:
    """Held-back quality of each variant against the full model (same tokens); with `first`, only
    the tokens from position first[i] of sequence i on are scored (an answer after its prompt)."""
    acc = {n: {"nll": 0.0, "agree": 0, "kl": 0.0} for n in variants}
    tokens = 0
    for i, ids in enumerate(tqdm(data, desc=desc)):
        start = first[i] - 1 if first else 0  # logits at position t predict token t + 1
        full = torch.log_softmax(m.logits(ids)[start:-1], -1)
        target = ids[start + 1 :, None]
        for name, v in variants.items():
            logp = torch.log_softmax(m.logits(ids, v.skip, dict(v.windows))[start:-1], -1) if v.changes(len(ids)) else full
            acc[name]["nll"] += -logp.gather(1, target).sum().item()
            acc[name]["agree"] += (logp.argmax(-1) == full.argmax(-1)).sum().item()
            acc[name]["kl"] += (full.exp() * (full - logp)).sum().item()
        tokens += len(target)
    base = math.exp(acc[profiles.FULL]["nll"] / tokens)
    return {
        n: Quality(
            ppl=math.exp(a["nll"] / tokens), delta_ppl_pct=100 * (math.exp(a["nll"] / tokens) / base - 1),
            top1_agreement=a["agree"] / tokens, kl=a["kl"] / tokens,
        )
        for n, a in acc.items()
    }


def kv_sensitivity(m: SkippableModel, data: list[torch.Tensor], probe: int) -> list[float]:
    """ΔPPL (%) when one layer at a time keeps only its last `probe` tokens of KV."""
    base = math.exp(m.nll(data))
    return [
        100 * (math.exp(m.nll(data, windows={i: probe})) / base - 1)
        for i in tqdm(range(m.num_layers), desc=f"KV sensitivity (window {probe})")
    ]


def default_tier_size(num_layers: int, tiers: int = 6) -> int:
    """Smallest divisor of `num_layers` giving at most `tiers` tiers (vLLM groups need equal sizes)."""
    return next(d for d in range(1, num_layers + 1) if num_layers % d == 0 and num_layers // d <= tiers)


@dataclass
class KVSettings:
    """What `calibrate` does for KV budgets (`fractions` empty: nothing)."""

    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    strategies: tuple[str, ...] = ("uniform", "pyramid", "sensitivity")
    reference_tokens: int = 2048  # the context length the fractions refer to
    probe_tokens: int = 512  # window of the sensitivity probe
    block_size: int = 128  # vLLM's KV block on the CPU backend; windows are whole blocks
    calib_chunks: int = 2
    eval_chunks: int = 4


def kv_allocations(num_layers: int, sensitivity: list[float], s: KVSettings, tier: int) -> dict[str, tuple[str, float, list[kv.Budget]]]:
    """name -> (strategy, fraction, per-layer budgets) for every strategy and fraction."""
    layers = list(range(num_layers))
    out = {}
    for sname in s.strategies:
        strategy = kv.STRATEGIES[sname]()
        for f in s.fractions:
            budgets = strategy.allocate(f, layers, num_layers, s.reference_tokens, s.block_size, tier, sensitivity)
            out[f"kv-{sname}-{round(100 * f)}"] = (sname, f, budgets)
    return out


def calibrate(
    model_dir: Path, data: str, eval_data: str, budgets: list[int], strategies: list[str],
    calib_chunks: int = 8, eval_chunks: int = 16, max_ppl_increase: float | None = None,
    kv_settings: KVSettings | None = None, category_settings: CategorySettings | None = None,
) -> tuple[profiles.ProfileSet, list[str]]:
    """Build the profile set (measured per category too with `category_settings`); returns it and
    the refusal messages of the quality guard."""
    from transformers import AutoTokenizer

    m = SkippableModel(model_dir)
    tok = AutoTokenizer.from_pretrained(model_dir)
    calib = chunks(tok, read_text(data), calib_chunks)
    held = chunks(tok, read_text(eval_data), eval_chunks)
    metrics = layer_metrics(m, calib)
    cache: dict[frozenset[int], float] = {}

    def calib_ppl(skip: frozenset[int]) -> float:
        if skip not in cache:
            cache[skip] = math.exp(m.nll(calib, skip))
        return cache[skip]

    sets: dict[str, frozenset[int]] = {profiles.FULL: frozenset()}
    strategy_of: dict[str, str] = {}
    for sname in strategies:
        strategy = STRATEGIES[sname]()
        for k in tqdm(budgets, desc=f"{sname} skip sets"):
            sets[f"{sname}-{k}"] = frozenset(strategy.select(k, m.num_layers, metrics, calib_ppl))
            strategy_of[f"{sname}-{k}"] = sname
    quality = evaluate(m, held, {n: Variant(skip) for n, skip in sets.items()})
    built = {name: profiles.Profile(name, skip, strategy_of.get(name, "none")) for name, skip in sets.items()}
    kv_doc: dict[str, Any] = {}
    if kv_settings and kv_settings.fractions:
        s = kv_settings
        sensitivity = kv_sensitivity(m, chunks(tok, read_text(data), s.calib_chunks, s.reference_tokens), s.probe_tokens)
        tier = default_tier_size(m.num_layers)
        allocations = kv_allocations(m.num_layers, sensitivity, s, tier)
        long_held = chunks(tok, read_text(eval_data), s.eval_chunks, s.reference_tokens)
        variants = {profiles.FULL: Variant()} | {
            n: Variant.of(profiles.Profile(n, kv=tuple(bs))) for n, (_, _, bs) in allocations.items()
        }
        kv_quality = evaluate(m, long_held, variants)
        for name, (sname, f, bs) in allocations.items():
            quality[name] = kv_quality[name]
            built[name] = profiles.Profile(name, frozenset(), f"kv-{sname}", kv=tuple(bs),
                                           kv_fraction=round(kv.kv_fraction(bs, s.reference_tokens, s.block_size), 4))
        kv_doc = {**vars(s), "full_quality": vars(kv_quality[profiles.FULL]), "sensitivity": sensitivity,
                  "tier_size": tier}
    refused = []
    kept = []
    for name, p in built.items():
        q = quality[name]
        if name != profiles.FULL and max_ppl_increase is not None and q.delta_ppl_pct > 100 * max_ppl_increase:
            kv_text = f", kv {[kv.budget_json(b) for b in p.kv]}" if p.kv else ""
            refused.append(
                f"{name} (skip {sorted(p.skip)}{kv_text}) refused: "
                f"held-back perplexity +{q.delta_ppl_pct:.1f}% exceeds the floor of +{100 * max_ppl_increase:.1f}% "
                "(--max-ppl-increase)"
            )
            continue
        kept.append(replace(p, quality=vars(q)))
    config = m.model.config
    model = profiles.ModelSpec(config.architectures[0] if config.architectures else "LlamaForCausalLM",
                               m.num_layers, config.hidden_size, Path(model_dir).name)
    sections: dict[str, Any] = {
        "calibration": {"data": data, "eval_data": eval_data, "chunk_tokens": CHUNK,
                        "calib_chunks": calib_chunks, "eval_chunks": eval_chunks,
                        "max_ppl_increase": max_ppl_increase, "refused": refused},
        "layer_metrics": metrics,
    }
    if kv_doc:
        sections["kv_calibration"] = kv_doc
    table = profiles.ProfileSet.of(model, kept, sections=sections)
    return (with_categories(m, tok, table, category_settings) if category_settings else table), refused


@dataclass
class CategorySettings:
    """What `calibrate --category-data` measures on each category's own prompts and answers."""

    sources: dict[str, str]  # category -> source (vllm_adaptive.category_data)
    examples: int = 32  # prompt/answer pairs scored teacher-forced (ΔPPL, top-1 on the answer tokens)
    greedy_prompts: int = 8  # of those, prompts answered greedily by every profile and by `full`
    new_tokens: int = 32  # length of a greedy answer
    prompt_tokens: int = 192  # longer prompts keep their first tokens
    answer_tokens: int = 64  # longer reference answers keep their first tokens
    seed: int = 0


def encode_example(tok, example: category_data.Example, s: CategorySettings) -> tuple[torch.Tensor, int]:
    """Token ids of prompt (through the chat template for a chat turn) + reference answer, and the
    index of the first answer token."""
    prompt_ids = tok(example.prompt, add_special_tokens=False).input_ids[: s.prompt_tokens]
    if example.chat:
        text = tok.decode(prompt_ids)
        prompt_ids = tok(tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                                 tokenize=False), add_special_tokens=False).input_ids
    answer_ids = tok(example.answer, add_special_tokens=False).input_ids[: s.answer_tokens]
    return torch.tensor(prompt_ids + answer_ids), len(prompt_ids)


def answer_agreement(m: SkippableModel, prompts: list[torch.Tensor], variants: dict[str, Variant],
                     new_tokens: int, stop: int | None, desc: str) -> dict[str, dict[str, float]]:
    """Greedy answers of each variant against `full`'s: exact-match rate and mean similarity
    (difflib ratio of the token sequences: 1 = same tokens in the same order)."""
    from difflib import SequenceMatcher

    out = {n: {"answer_exact_match": 0.0, "answer_similarity": 0.0} for n in variants}
    for ids in tqdm(prompts, desc=desc):
        reference = m.greedy(ids, new_tokens, Variant(), stop)
        for name, v in variants.items():
            answer = m.greedy(ids, new_tokens, v, stop) if v.changes(len(ids) + new_tokens) else reference
            out[name]["answer_exact_match"] += (answer == reference) / len(prompts)
            out[name]["answer_similarity"] += SequenceMatcher(None, answer, reference).ratio() / len(prompts)
    return out


def measure_categories(m: SkippableModel, tok, variants: dict[str, Variant],
                       s: CategorySettings) -> tuple[dict[str, dict[str, dict[str, float]]], dict[str, Any]]:
    """profile -> category -> figures, and the record of what each category was measured on."""
    measured: dict[str, dict[str, dict[str, float]]] = {n: {} for n in variants}
    record: dict[str, Any] = {}
    for category, source in s.sources.items():
        examples = category_data.load_examples(source, s.examples, s.seed)
        encoded = [encode_example(tok, e, s) for e in examples]
        data, first = [ids for ids, _ in encoded], [start for _, start in encoded]
        quality = evaluate(m, data, variants, first, desc=f"{category}: answers")
        prompts = [ids[:start] for ids, start in encoded[: s.greedy_prompts]]
        agreement = answer_agreement(m, prompts, variants, s.new_tokens, tok.eos_token_id, f"{category}: greedy")
        for name in variants:
            measured[name][category] = vars(quality[name]) | agreement[name]
        record[category] = {
            "source": source, "examples": len(examples), "answer_tokens": sum(len(d) - f for d, f in zip(data, first)),
            "mean_prompt_tokens": round(sum(first) / len(first), 1), "greedy_prompts": len(prompts),
            "new_tokens": s.new_tokens, "chat_template": examples[0].chat,
        }
    settings = {k: v for k, v in vars(s).items() if k != "sources"}
    return measured, {"categories": record, **settings}


def with_categories(m: SkippableModel, tok, table: profiles.ProfileSet, s: CategorySettings) -> profiles.ProfileSet:
    """`table` with every profile measured on every category of `s` (recorded in the file); categories
    measured before and not named again are kept, so categories can be added one run at a time."""
    measured, record = measure_categories(m, tok, {n: Variant.of(p) for n, p in table.profiles.items()}, s)
    before = table.sections.get("category_calibration", {}).get("categories", {})
    record["categories"] = before | record["categories"]
    return replace(table, profiles={n: replace(p, categories=p.categories | measured[n]) for n, p in table.profiles.items()},
                   sections=table.sections | {"category_calibration": record})


def calibrate_categories(model_dir: Path, table: profiles.ProfileSet, s: CategorySettings) -> profiles.ProfileSet:
    """Measure an existing profile file's profiles on each category (`calibrate --profiles FILE`)."""
    from transformers import AutoTokenizer

    return with_categories(SkippableModel(model_dir), AutoTokenizer.from_pretrained(model_dir), table, s)
