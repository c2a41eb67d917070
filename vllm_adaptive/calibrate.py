"""`vllm-adaptive calibrate`: measure layer importance on real text and write a skip-profile file.

Runs the model with transformers on the CPU (same weights vLLM serves):
1. per-layer metrics on calibration text: block influence 1-cos(h_in, h_out) (ShortGPT),
   relative L2 change ||h_out-h_in||/||h_in|| (LAC), and ΔPPL when the layer alone is removed;
2. skip sets for each budget and strategy (balanced, calibrated, random);
3. quality of each set on *held-back* text: perplexity, ΔPPL, top-1 next-token agreement
   and KL(full || skipped) against the full model;
4. KV budgets: two per-layer signals — the perplexity cost of cutting that layer alone to a short
   window (ΔPPL on long calibration chunks), and its retrieval cost (the answer's NLL on synthetic
   pass-key prompts built from calibration text, a fact placed far behind the window) — each
   measured with plain windows and with sink + window probes; per-layer budgets from each
   allocation strategy (uniform, pyramid, sensitivity, retrieval), with and without sink tokens,
   at each fraction of a full context's KV, and their quality on long held-back chunks. A window
   here is the same computation as vLLM's (each query sees the last W positions of that layer,
   and the first S with sinks).
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

#: A windowed layer's budget in a Variant: a window of n tokens or a sink + window.
Window = int | kv.SinkWindow


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

    def logits(self, ids: torch.Tensor, skip: Iterable[int] = (), windows: dict[int, Window] | None = None,
               last: int = 0) -> torch.Tensor:
        """Next-token logits with `skip` left out and layer i attending as its budget windows[i] says
        (of the `last` positions only when > 0: the vocabulary projection dominates long inputs)."""
        skip = set(skip)
        self.model.model.layers = nn.ModuleList([l for i, l in enumerate(self.layers) if i not in skip])
        handles = [self.layers[i].register_forward_pre_hook(_window_hook(w), with_kwargs=True)
                   for i, w in (windows or {}).items() if kv.span(w) < len(ids) and i not in skip]
        try:
            with torch.inference_mode():
                return self.model(ids[None], use_cache=False, logits_to_keep=last).logits[0].float()
        finally:
            self.model.model.layers = self.layers
            for h in handles:
                h.remove()

    def nll(self, data: list[torch.Tensor], skip: Iterable[int] = (), windows: dict[int, Window] | None = None) -> float:
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


def _window_hook(budget: Window):
    """Pre-hook giving one decoder layer a sliding-window causal mask (query at position q sees
    k in q-W+1..q, and k < S too with a SinkWindow(S, W)), for a whole sequence or a KV-cached
    step alike: the mask vLLM applies (vllm_adaptive.attention.sink_window for sinks)."""
    sink, window = (budget.sink, budget.window) if isinstance(budget, kv.SinkWindow) else (0, budget)

    def hook(module, args, kwargs):
        q = kwargs["position_ids"][0][:, None]
        k = torch.arange(int(q[-1]) + 1, device=q.device)[None, :]
        mask = ((k <= q) & ((k < sink) | (q - k < window)))[None, None]
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
    windows: tuple[tuple[int, Window], ...] = ()

    @classmethod
    def of(cls, profile: profiles.Profile) -> Variant:
        """The computation a profile's file entry describes (its skip set and windows)."""
        return cls(profile.skip, tuple((i, b) for i, b in enumerate(profile.kv) if kv.span(b) is not None))

    def changes(self, length: int) -> bool:
        """Whether a sequence of `length` tokens computes differently from the full model."""
        return bool(self.skip) or any(kv.span(w) < length for _, w in self.windows)


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


def kv_sensitivity(m: SkippableModel, data: list[torch.Tensor], probe: Window) -> list[float]:
    """ΔPPL (%) when one layer at a time keeps only the `probe` budget of KV."""
    base = math.exp(m.nll(data))
    return [
        100 * (math.exp(m.nll(data, windows={i: probe})) / base - 1)
        for i in tqdm(range(m.num_layers), desc=f"KV perplexity sensitivity ({kv.budget_json(probe)})")
    ]


#: Names for the synthetic pass-key prompts (a task unlike the bench's "magic number" needles).
_KEY_NAMES = ("Alder", "Birch", "Cedar", "Dogwood", "Elm", "Fir", "Ginkgo", "Hazel", "Juniper", "Larch", "Maple", "Oak")


def passkey_prompts(tokenizer, text: str, n: int, length: int, seed: int = 1) -> list[tuple[torch.Tensor, int]]:
    """`n` prompts of `length` tokens: calibration text with one "access code" line placed at 10-40 %
    depth (far behind the probe window), a question, and the answer's tokens (ids, answer length)."""
    import random

    rng = random.Random(seed)
    hay = tokenizer(text).input_ids
    out = []
    for i in range(n):
        name, code = _KEY_NAMES[i % len(_KEY_NAMES)], str(rng.randint(100000, 999999))
        fact = tokenizer(f"\nNote: the access code for {name} is {code}.\n").input_ids
        question = tokenizer(f"\n\nQuestion: what is the access code for {name}?\n"
                             f"Answer: the access code for {name} is").input_ids
        answer = tokenizer(f" {code}").input_ids
        start = rng.randint(0, len(hay) - length)
        body = hay[start : start + length - len(fact) - len(question) - len(answer)]
        cut = int(rng.uniform(0.1, 0.4) * len(body))
        out.append((torch.tensor(body[:cut] + fact + body[cut:] + question + answer), len(answer)))
    return out


def answer_nll(m: SkippableModel, prompts: list[tuple[torch.Tensor, int]], windows: dict[int, Window] | None = None) -> float:
    """Mean NLL per answer token of the pass-key prompts."""
    total = 0.0
    for ids, n in prompts:
        logp = torch.log_softmax(m.logits(ids, windows=windows, last=n + 1)[:-1], -1)
        total += -logp.gather(1, ids[-n:, None]).mean().item()
    return total / len(prompts)


def kv_retrieval(m: SkippableModel, prompts: list[tuple[torch.Tensor, int]], probe: Window) -> list[float]:
    """Increase of the pass-key answer NLL when one layer at a time keeps only the `probe` budget."""
    base = answer_nll(m, prompts)
    return [answer_nll(m, prompts, {i: probe}) - base
            for i in tqdm(range(m.num_layers), desc=f"KV retrieval sensitivity ({kv.budget_json(probe)})")]


def default_tier_size(num_layers: int, tiers: int = 6) -> int:
    """Smallest divisor of `num_layers` giving at most `tiers` tiers (vLLM groups need equal sizes)."""
    return next(d for d in range(1, num_layers + 1) if num_layers % d == 0 and num_layers // d <= tiers)


@dataclass
class KVSettings:
    """What `calibrate` does for KV budgets (`fractions` empty: nothing)."""

    fractions: tuple[float, ...] = (0.25, 0.5, 0.75)
    strategies: tuple[str, ...] = ("uniform", "pyramid", "sensitivity", "retrieval")
    reference_tokens: int = 2048  # the context length the fractions refer to
    probe_tokens: int = 512  # window of the sensitivity probes
    block_size: int = 128  # vLLM's KV block on the CPU backend; windows are whole blocks
    calib_chunks: int = 2
    eval_chunks: int = 4
    sink: int = 4  # sink tokens of the sink + window allocations (0: plain windows only)
    retrieval_prompts: int = 6
    retrieval_tokens: int = 1024  # length of a pass-key prompt

    @property
    def sinks(self) -> tuple[int, ...]:
        """Sink counts to allocate with: plain windows, and sinks when asked for."""
        return (0, self.sink) if self.sink else (0,)


def kv_allocations(num_layers: int, signals: dict[int, kv.LayerSignals], s: KVSettings,
                   tier: int) -> tuple[dict[str, tuple[str, float, list[kv.Budget]]], list[str]]:
    """name -> (strategy, fraction, per-layer budgets) for every strategy, sink count and fraction
    (`signals`: what was measured with each sink count's probe), and why any could not be made."""
    layers = list(range(num_layers))
    out, refused = {}, []
    for sname in s.strategies:
        for sink in s.sinks:
            strategy = kv.STRATEGIES[sname](sink=sink)
            label = f"{sname}-sink{sink}" if sink else sname
            for f in s.fractions:
                name = f"kv-{label}-{round(100 * f)}"
                try:
                    budgets = strategy.allocate(f, layers, num_layers, s.reference_tokens, s.block_size, tier,
                                                signals[sink])
                except ValueError as exc:  # e.g. the fraction is below a one-block window plus the sinks
                    refused.append(f"{name} not allocated: {exc}")
                    continue
                out[name] = (label, f, budgets)
    return out, refused


def _top(values: list[float], n: int) -> list[int]:
    """The `n` layers a signal ranks costliest (reported: which layers each signal picks)."""
    return sorted(range(len(values)), key=lambda i: -values[i])[:n]


def kv_signals(m: SkippableModel, tok, data: str, s: KVSettings) -> dict[int, kv.LayerSignals]:
    """The per-layer signals for each sink count (probes of `probe_tokens`, with those sinks)."""
    text = read_text(data)
    long_calib = chunks(tok, text, s.calib_chunks, s.reference_tokens)
    need_retrieval = "retrieval" in s.strategies
    keys = passkey_prompts(tok, text, s.retrieval_prompts, s.retrieval_tokens) if need_retrieval else []
    out = {}
    for sink in s.sinks:
        probe: Window = kv.SinkWindow(sink, s.probe_tokens) if sink else s.probe_tokens
        out[sink] = kv.LayerSignals(kv_sensitivity(m, long_calib, probe),
                                    kv_retrieval(m, keys, probe) if need_retrieval else None)
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
    not_allocated: list[str] = []
    if kv_settings and kv_settings.fractions:
        s = kv_settings
        signals = kv_signals(m, tok, data, s)
        tier = default_tier_size(m.num_layers)
        allocations, not_allocated = kv_allocations(m.num_layers, signals, s, tier)
        long_held = chunks(tok, read_text(eval_data), s.eval_chunks, s.reference_tokens)
        variants = {profiles.FULL: Variant()} | {
            n: Variant.of(profiles.Profile(n, kv=tuple(bs))) for n, (_, _, bs) in allocations.items()
        }
        kv_quality = evaluate(m, long_held, variants)
        for name, (sname, f, bs) in allocations.items():
            quality[name] = kv_quality[name]
            built[name] = profiles.Profile(name, frozenset(), f"kv-{sname}", kv=tuple(bs),
                                           kv_fraction=round(kv.kv_fraction(bs, s.reference_tokens, s.block_size), 4))
        kv_doc = {**vars(s), "full_quality": vars(kv_quality[profiles.FULL]), "tier_size": tier,
                  "sensitivity": signals[0].perplexity, "retrieval": signals[0].retrieval}
        if s.sink:
            kv_doc |= {"sensitivity_sink": signals[s.sink].perplexity, "retrieval_sink": signals[s.sink].retrieval}
        kv_doc["top_layers"] = {f"{signal}{f'-sink{sink}' if sink else ''}": _top(values, tier)
                                for sink, sig in signals.items()
                                for signal, values in (("perplexity", sig.perplexity), ("retrieval", sig.retrieval))
                                if values is not None}
    refused = list(not_allocated)
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
