"""`vllm-adaptive calibrate`: measure layer importance on real text and write a skip-profile file.

Runs the model with transformers on the CPU (same weights vLLM serves):
1. per-layer metrics on calibration text: block influence 1-cos(h_in, h_out) (ShortGPT),
   relative L2 change ||h_out-h_in||/||h_in|| (LAC), and ΔPPL when the layer alone is removed;
2. skip sets for each budget and strategy (balanced, calibrated, random);
3. quality of each set on *held-back* text: perplexity, ΔPPL, top-1 next-token agreement
   and KL(full || skipped) against the full model.
Profiles worse than the quality floor (--max-ppl-increase) are refused, with the reason.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm import tqdm

from vllm_adaptive import envs, profiles
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


def chunks(tokenizer, text: str, n: int) -> list[torch.Tensor]:
    ids = tokenizer(text, return_tensors="pt").input_ids[0]
    out = [ids[i : i + CHUNK] for i in range(0, len(ids) - CHUNK, CHUNK)]
    if len(out) < n:
        raise ValueError(f"text too short: {len(out)} chunks of {CHUNK} tokens, {n} needed")
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

    def logits(self, ids: torch.Tensor, skip: Iterable[int] = ()) -> torch.Tensor:
        skip = set(skip)
        self.model.model.layers = nn.ModuleList([l for i, l in enumerate(self.layers) if i not in skip])
        try:
            with torch.inference_mode():
                return self.model(ids[None], use_cache=False).logits[0].float()
        finally:
            self.model.model.layers = self.layers

    def nll(self, data: list[torch.Tensor], skip: Iterable[int] = ()) -> float:
        """Mean next-token negative log-likelihood over `data`."""
        total, count = 0.0, 0
        for ids in data:
            logp = torch.log_softmax(self.logits(ids, skip)[:-1], -1)
            total += -logp.gather(1, ids[1:, None]).sum().item()
            count += len(ids) - 1
        return total / count


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


def evaluate(m: SkippableModel, data: list[torch.Tensor], skip_sets: dict[str, frozenset[int]]) -> dict[str, Quality]:
    """Held-back quality of each skip set against the full model (same tokens)."""
    acc = {n: {"nll": 0.0, "agree": 0, "kl": 0.0} for n in skip_sets}
    tokens = 0
    for ids in tqdm(data, desc="held-back evaluation"):
        full = torch.log_softmax(m.logits(ids)[:-1], -1)
        target = ids[1:, None]
        for name, skip in skip_sets.items():
            logp = full if not skip else torch.log_softmax(m.logits(ids, skip)[:-1], -1)
            acc[name]["nll"] += -logp.gather(1, target).sum().item()
            acc[name]["agree"] += (logp.argmax(-1) == full.argmax(-1)).sum().item()
            acc[name]["kl"] += (full.exp() * (full - logp)).sum().item()
        tokens += len(ids) - 1
    base = math.exp(acc[profiles.FULL]["nll"] / tokens)
    return {
        n: Quality(
            ppl=math.exp(a["nll"] / tokens), delta_ppl_pct=100 * (math.exp(a["nll"] / tokens) / base - 1),
            top1_agreement=a["agree"] / tokens, kl=a["kl"] / tokens,
        )
        for n, a in acc.items()
    }


def calibrate(
    model_dir: Path, data: str, eval_data: str, budgets: list[int], strategies: list[str],
    calib_chunks: int = 8, eval_chunks: int = 16, max_ppl_increase: float | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Build the profile document; returns it and the refusal messages of the quality guard."""
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
    quality = evaluate(m, held, sets)
    refused = []
    doc_profiles = {}
    for name, skip in sets.items():
        q = quality[name]
        if name != profiles.FULL and max_ppl_increase is not None and q.delta_ppl_pct > 100 * max_ppl_increase:
            refused.append(
                f"{name} (skip {sorted(skip)}) refused: held-back perplexity +{q.delta_ppl_pct:.1f}% "
                f"exceeds the floor of +{100 * max_ppl_increase:.1f}% (--max-ppl-increase)"
            )
            continue
        doc_profiles[name] = {"skip": sorted(skip), "strategy": strategy_of.get(name, "none"), "quality": vars(q)}
    config = m.model.config
    doc = {
        "format": profiles.FORMAT,
        "model": {"architecture": config.architectures[0] if config.architectures else "LlamaForCausalLM",
                  "num_layers": m.num_layers, "hidden_size": config.hidden_size, "name": Path(model_dir).name},
        "default": profiles.FULL,
        "profiles": doc_profiles,
        "calibration": {"data": data, "eval_data": eval_data, "chunk_tokens": CHUNK,
                        "calib_chunks": calib_chunks, "eval_chunks": eval_chunks,
                        "max_ppl_increase": max_ppl_increase, "refused": refused},
        "layer_metrics": metrics,
    }
    return doc, refused


def write(doc: dict[str, Any], out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1))
