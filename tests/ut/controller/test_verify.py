"""Verifiers: each structural guard, the learned scorer's shipped weights, calibration maths."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest

from bench import hard_negatives as hn
from controller import verify
from controller.verify import calibrate
from controller.verify.features import GUARDS, mismatches

# (guard, stored question, a question that differs only there, the same question re-typed)
CASES = [
    ("negation", "Is it safe to take ibuprofen with alcohol?", "Is it safe to take ibuprofen without alcohol?",
     "is it safe to take ibuprofen with alcohol"),
    ("negation", "Does the iPhone 12 support wireless charging?", "Doesn't the iPhone 12 support wireless charging?",
     "Does the iPhone 12 support wireless charging? Thanks!"),
    ("number", "How many calories are in 3 eggs?", "How many calories are in 4 eggs?",
     "How many calories are in three eggs?"),
    ("date", "Which flights leave London on May 3?", "Which flights leave London on June 3?",
     "which flights leave london on may 3"),
    ("date", "Who won the World Cup in 2014?", "Who won the World Cup in 2018?", "Who won the World Cup in 2014"),
    ("unit", "How long does it take to run 10 km?", "How long does it take to run 10 miles?",
     "How long does it take to run 10km?"),
    ("name", "What is the capital of Austria?", "What is the capital of Australia?", "what is the capital of austria?"),
    ("comparison", "Which planet is bigger than Earth?", "Which planet is smaller than Earth?",
     "Which planet is larger than Earth?"),
    ("scope", "Do all birds fly south in winter?", "Do some birds fly south in winter?",
     "Do all birds fly south in winter"),
    ("order", "How do I convert USD to EUR?", "How do I convert EUR to USD?", "how do I convert USD to EUR"),
    ("order", "Is a whale bigger than a shark?", "Is a shark bigger than a whale?", "Is a whale bigger than a shark"),
]


@pytest.mark.parametrize("guard,stored,negative,positive", CASES)
def test_each_guard_rejects_its_edit_and_keeps_the_repeat(guard, stored, negative, positive):
    assert guard in GUARDS
    assert guard in mismatches(negative, stored)
    assert mismatches(positive, stored) == []


@pytest.mark.parametrize("name", list(verify.VERIFIERS))
def test_verifiers_score_in_unit_interval_and_guarded_ones_reject(name):
    v = verify.load(name)
    for _, stored, negative, positive in CASES:
        s_neg, s_pos = v.score(negative, stored, 0.95), v.score(positive, stored, 0.95)
        assert 0.0 <= s_neg <= 1.0 and 0.0 <= s_pos <= 1.0
        if name in ("guards", "guarded_learned"):
            assert s_neg == 0.0 and s_pos > 0.0
        if name == "learned":
            assert s_pos > s_neg


@pytest.mark.parametrize("stored,query", [
    ("What is the difference between Java and Python?", "What is the difference between Python and Java?"),
    ("Who is taller, Obama or Trump?", "Who is taller, Trump or Obama?"),
    ("In Python, how do I sort a list?", "How do I sort a list in Python?"),
    ("Can I mix bleach with vinegar?", "Can I mix vinegar with bleach?"),
])
def test_order_keeps_symmetric_exchanges_and_moved_phrases(stored, query):
    assert "order" not in mismatches(query, stored)


@pytest.mark.parametrize("text,deictic", [
    ("How do I solve this maths problem?", True),
    ("What is the output of the following code?", True),
    ("Can someone proofread my essay?", True),
    ("How do I answer the question given below?", True),
    ("What does this error mean?", True),
    ("What is the weather this week?", False),
    ("Which countries have temperatures below zero in winter?", False),
    ("How do I solve quadratic equations?", False),
])
def test_deixis_flags_questions_about_absent_content(text, deictic):
    other = "How do I solve it?"
    assert ("deixis" in mismatches(text, other)) is deictic


@pytest.mark.parametrize("name", list(verify.VERIFIERS))
def test_a_deictic_question_is_served_only_as_a_repeat(name):
    """Two users' "this problem" are two problems: only the same text re-typed is served."""
    v = verify.load(name)
    stored = "How do I solve this maths problem?"
    assert verify.score(v, "how do I solve this maths problem", stored, 0.99) == 1.0
    if name in ("guards", "guarded_learned"):
        assert verify.score(v, "How do I solve this math problem?", stored, 0.99) == 0.0


def test_choose_takes_the_best_accepted_candidate():
    v = verify.load("guards")
    stored = "What is the capital of Austria?"
    cands = [("What is the capital of Australia?", 0.97), (stored, 0.93), ("What is the capital of Austria", 0.90)]
    assert verify.choose(v, 1.0, stored, cands) == 1  # the guard-failing closer one loses
    assert verify.choose(v, 1.0, "What is the capital of Chile?", cands) is None
    with pytest.raises(ValueError, match="unknown verifier"):
        verify.load("bogus")


def test_guards_on_generated_edits_of_real_prompts():
    """The generator's edits of real QQP questions trip a guard (most of the time: a generated
    edit the guards miss is a false hit the benchmark counts)."""
    rng = random.Random(0)
    questions = [p["a"] for p in hn.data.qqp_pairs(limit=400, seed=1)]
    caught = total = 0
    for q in questions:
        for edit in (hn.negate, hn.change_number, hn.change_date, hn.change_comparison, hn.change_scope,
                     hn.swap_roles):
            out = edit(q, rng)
            if out and out != q:
                total += 1
                caught += bool(mismatches(out, q))
    assert total > 100 and caught / total > 0.9


def test_swap_roles_exchanges_across_a_relation_only():
    rng = random.Random(0)
    assert hn.swap_roles("How do I convert 5 USD to EUR?", rng) == "How do I convert 5 EUR to USD?"
    assert hn.swap_roles("Is Paris bigger than Rome?", rng) == "Is Rome bigger than Paris?"
    assert hn.swap_roles("What is the difference between Java and Python?", rng) is None
    assert hn.swap_roles("What is the capital of France?", rng) is None


def test_upper_bound_matches_closed_forms():
    # 0 events in n: the one-sided limit is 1 - alpha^(1/n)
    for n in (10, 299, 1000):
        assert calibrate.upper_bound(0, n) == pytest.approx(1 - 0.05 ** (1 / n), rel=1e-6)
    assert calibrate.upper_bound(5, 100) == pytest.approx(0.1023, abs=1e-3)  # tabulated exact limit
    assert calibrate.negatives_needed(0.01) == 299
    assert calibrate.allowed_false_hits(299, 0.01) == 0
    assert calibrate.allowed_false_hits(298, 0.01) == -1


def test_calibrate_meets_the_bound_or_refuses():
    rng = np.random.default_rng(0)
    labels = np.array([True] * 500 + [False] * 2000)
    sims = np.where(labels, rng.uniform(0.8, 1.0, labels.size), rng.uniform(0.5, 0.95, labels.size))
    guard = np.where(labels, 1.0, (rng.random(labels.size) < 0.1).astype(float))  # guards catch 90 %
    point = calibrate.calibrate(sims, labels, {"threshold": np.ones(labels.size), "guards": guard}, 0.01)
    accept = (sims >= point.threshold) & ({"threshold": np.ones(labels.size), "guards": guard}[point.verifier] >= point.min_score)
    assert point.false_hit_upper <= 0.01 and (accept & ~labels).sum() / 2000 == pytest.approx(point.false_hit_rate)
    alone = calibrate.calibrate(sims, labels, {"threshold": np.ones(labels.size)}, 0.01)
    assert point.verifier == "guards" and point.recall > alone.recall and alone.false_hit_upper <= 0.01
    with pytest.raises(calibrate.Refusal, match="needs >= 299"):
        calibrate.calibrate(sims[:600], labels[:600], {"threshold": np.ones(600)}, 0.01)
    assert math.isclose(point.recall, (accept & labels).sum() / 500)


def test_bound_holds_per_kind_of_negative():
    """Pooled, a rare-but-easy kind dilutes a common-but-hard one; per kind, it cannot."""
    rng = np.random.default_rng(1)
    labels = np.array([True] * 400 + [False] * 3000 + [False] * 400)
    kinds = np.array(["repeat"] * 400 + ["easy"] * 3000 + ["hard"] * 400)
    sims = np.concatenate([rng.uniform(0.85, 1.0, 400), rng.uniform(0.0, 0.5, 3000), rng.uniform(0.5, 0.96, 400)])
    ones = {"threshold": np.ones(labels.size)}
    pooled = calibrate.calibrate(sims, labels, ones, 0.01)
    per_kind = calibrate.calibrate(sims, labels, ones, 0.01, kinds=kinds)
    def hard_false_hits(p: calibrate.OperatingPoint) -> int:
        return int(((sims >= p.threshold) & (kinds == "hard")).sum())

    assert hard_false_hits(pooled) / 400 > 0.01  # pooled: 3,400 negatives leave room for ~20 hard ones
    assert calibrate.upper_bound(hard_false_hits(per_kind), 400) <= 0.01
    assert per_kind.recall < pooled.recall


@pytest.mark.parametrize("name", list(verify.VERIFIERS))
def test_an_exact_repeat_is_always_accepted(name):
    """Whatever a scorer makes of a long prompt, the same text (case and spacing aside) is a hit."""
    long_prompt = hn.data.humaneval_prompts()[0]
    v = verify.load(name)
    for text in (long_prompt, "Hi", "What is the capital of France?"):
        assert verify.choose(v, 1.0, "  " + text.upper() + " ", [(text, 0.99)]) == 0


# (stored, the same question re-typed): case, punctuation, contraction, greeting, thanks, one typo
REPEATS = [
    ("What is the capital of Austria?", "what is the capital of austria"),
    ("What is C programming?", "What's C programming?"),
    ("Why is the sky blue?", "Hi! why is the sky blue"),
    ("How do I reverse a list in Python?", "Please tell me: how do I reverse a list in Python? Thanks!"),
    ("What are some amazing photographs of astronomy?", "What are some amazing photographs of asrtonomy?"),
    ("Does the iPhone 12 support wireless charging?", "does the iPhone 12 support  wireless charging? Thank you."),
]
# (stored, a different question that a text normaliser could wrongly fold into it)
NOT_REPEATS = [
    ("Is it safe to take ibuprofen with alcohol?", "Isn't it safe to take ibuprofen with alcohol?"),  # n't
    ("What is C++?", "What is C?"),  # a symbol inside a token
    ("Is 3.5 bigger than 3?", "Is 35 bigger than 3?"),
    ("Is the effect causal?", "Is the effect casual?"),  # both known words: not a typo
    ("Where is Iran?", "Where is Iraq?"),  # too short to call a typo
    ("How many calories are in 3 eggs?", "How many calories are in 4 eggs?"),
    ("What is the capital of Austria?", "What is the capital of Australia?"),
    ("Explain recursion.", "Explain recursion. Please answer briefly."),  # an instruction, not politeness
    ("What is Python?", "What is Python used for?"),
]


@pytest.mark.parametrize("stored,query", REPEATS)
def test_a_repeat_is_proposed_and_accepted_below_any_threshold(stored, query):
    assert verify.is_repeat(query, stored) and verify.is_repeat(stored, query)
    assert verify.proposed(query, stored, similarity=0.2, threshold=0.99)
    for name in verify.VERIFIERS:
        assert verify.score(verify.load(name), query, stored, 0.2) == 1.0


@pytest.mark.parametrize("stored,query", NOT_REPEATS)
def test_a_different_question_is_not_a_repeat(stored, query):
    assert not verify.is_repeat(query, stored) and not verify.is_repeat(stored, query)
    assert not verify.proposed(query, stored, similarity=0.98, threshold=0.99)


def test_repeats_count_as_accepted_in_calibration():
    """A repeat is served at every setting, so the calibrated point's recall and false hits include it."""
    rng = np.random.default_rng(2)
    labels = np.array([True] * 300 + [False] * 1000)
    sims = np.concatenate([rng.uniform(0.6, 1.0, 300), rng.uniform(0.0, 0.9, 1000)])
    repeated = np.zeros(labels.size, bool)
    repeated[:100] = True  # a third of the positives are repeats, whatever their cosine
    sims[:100] = 0.3
    ones = {"threshold": np.ones(labels.size)}
    without = calibrate.calibrate(sims, labels, ones, 0.01)
    with_repeats = calibrate.calibrate(sims, labels, ones, 0.01, repeated=repeated)
    assert with_repeats.threshold == without.threshold
    assert with_repeats.recall == pytest.approx(without.recall + 100 / 300)
    bad = repeated.copy()
    bad[300:320] = True  # 20 negatives that a repeat rule would serve: no setting can meet the bound
    with pytest.raises(calibrate.Refusal):
        calibrate.calibrate(sims, labels, ones, 0.01, repeated=bad)
