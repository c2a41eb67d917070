"""Per-category calibration on a tiny random Llama (fast): answer-token scoring, greedy answers
with a KV cache that match the uncached computation, the --profiles command and its file."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from vllm_adaptive import calibrate, category_data
from vllm_adaptive.profiles import ModelSpec, Profile, ProfileSet


@pytest.fixture(scope="module")
def tiny(tiny_llama_dir):
    from transformers import AutoTokenizer

    return calibrate.SkippableModel(tiny_llama_dir), AutoTokenizer.from_pretrained(tiny_llama_dir)


def uncached_greedy(m, ids, n, variant):
    """Reference: recompute the whole sequence each step, layers removed, windows as masks."""
    out = []
    for _ in range(n):
        out.append(int(m.logits(torch.cat([ids, torch.tensor(out, dtype=ids.dtype)]), variant.skip,
                                dict(variant.windows))[-1].argmax()))
    return out


@pytest.mark.parametrize("variant", [calibrate.Variant(), calibrate.Variant(frozenset({1})),
                                     calibrate.Variant(windows=((0, 4), (1, 6)))])
def test_cached_greedy_equals_the_uncached_computation(tiny, variant):
    m, _ = tiny
    ids = torch.arange(100, 112)
    assert m.greedy(ids, 6, variant, stop=None) == uncached_greedy(m, ids, 6, variant)


def test_answer_tokens_only_are_scored(tiny):
    m, tok = tiny
    settings = calibrate.CategorySettings({"x": "pydoc"}, answer_tokens=10)
    ids, first = calibrate.encode_example(tok, category_data.Example("What is 2+2?", "It is four. " * 5, True), settings)
    assert len(ids) - first == 10 and "<|im_start|>assistant" in tok.decode(ids[:first])
    q = calibrate.evaluate(m, [ids], {"full": calibrate.Variant(), "skip": calibrate.Variant(frozenset({0}))}, [first])
    assert q["full"].delta_ppl_pct == 0 and q["full"].top1_agreement == 1
    assert q["skip"].delta_ppl_pct != 0 and q["skip"].top1_agreement < 1


def test_calibrate_profiles_per_category_writes_figures_and_sources(tiny_llama_dir, tmp_path):
    rows = [{"prompt": f"Tell me about item {i}.", "answer": f"Item {i} is a thing with {i} parts."} for i in range(6)]
    (tmp_path / "mine.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    table = ProfileSet.of(ModelSpec.from_folder(tiny_llama_dir), [Profile("skip0", frozenset({0}))])
    table.dump(tmp_path / "in.json")
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, "-m", "vllm_adaptive.cli", "calibrate", str(tiny_llama_dir),
                           "--profiles", str(tmp_path / "in.json"), "--out", str(out),
                           "--category-data", f"mine={tmp_path / 'mine.jsonl'},prose=pydoc",
                           "--category-examples", "4", "--category-greedy-prompts", "2", "--category-new-tokens", "4"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    back = ProfileSet.load(out, ModelSpec.from_folder(tiny_llama_dir))
    record = back.sections["category_calibration"]["categories"]
    assert record["mine"]["source"].endswith("mine.jsonl") and record["mine"]["examples"] == 4
    assert record["prose"]["source"] == "pydoc" and record["prose"]["chat_template"] is False
    full, skip = back.get("full").categories, back.get("skip0").categories
    for category in ("mine", "prose"):
        assert full[category]["delta_ppl_pct"] == 0 and full[category]["answer_exact_match"] == 1
        assert skip[category]["delta_ppl_pct"] != 0 and 0 < skip[category]["top1_agreement"] <= 1
        assert 0 <= skip[category]["answer_similarity"] <= 1
    assert "category mine:" in proc.stdout and "skip0" in proc.stdout


@pytest.mark.parametrize("spec, message", [
    ("code", "expected NAME=SOURCE"),
    ("code=nope", "unknown source 'nope'"),
    ("a=pydoc,a=humaneval", "names category 'a' twice"),
])
def test_bad_category_specs_say_why(spec, message):
    with pytest.raises(category_data.CategoryDataError, match=message):
        category_data.parse_spec(spec)


def test_bad_jsonl_rows_name_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    with pytest.raises(category_data.CategoryDataError, match=r"rows.jsonl:2: expected"):
        category_data.load_examples(str(path), 4)


def test_categories_are_added_one_run_at_a_time(tiny, tiny_llama_dir, tmp_path):
    m, tok = tiny
    (tmp_path / "a.jsonl").write_text('{"prompt": "Say a.", "answer": "a a a"}\n')
    table = ProfileSet.of(ModelSpec.from_folder(tiny_llama_dir), [Profile("skip0", frozenset({0}))])
    settings = {"examples": 1, "greedy_prompts": 1, "new_tokens": 2}
    first = calibrate.with_categories(m, tok, table, calibrate.CategorySettings({"a": str(tmp_path / "a.jsonl")}, **settings))
    both = calibrate.with_categories(m, tok, first, calibrate.CategorySettings({"b": "pydoc"}, **settings))
    assert set(both.get("skip0").categories) == {"a", "b"}
    assert both.get("skip0").categories["a"] == first.get("skip0").categories["a"]
    assert set(both.sections["category_calibration"]["categories"]) == {"a", "b"}
