"""Shadow-check bookkeeping: tighten on evidence of too many false hits, relax only on evidence of room."""

from __future__ import annotations

import numpy as np

from controller.shadow import CEILING, STEP, ShadowMonitor, answer_text, same_answer
from controller.verify.calibrate import upper_bound


def test_a_false_hit_above_the_bound_tightens_and_restarts_the_evidence():
    m = ShadowMonitor()
    for _ in range(50):
        m.record("qa", False, 0.01)
    assert m.threshold("qa", 0.9) == 0.9  # clean checks, no offset to relax
    m.record("qa", True, 0.01)  # 1 in 51: upper limit ~9 % > 1 %
    s = m.state("qa")
    assert s.offset == STEP and s.checks == 0 and s.total_checks == 51 and s.total_false_hits == 1
    assert m.threshold("qa", 0.9) == 0.9 + STEP
    assert m.threshold("qa", 0.995) == CEILING


def test_relaxing_needs_enough_clean_checks():
    m = ShadowMonitor()
    m.record("qa", True, 0.01)
    assert m.state("qa").offset == STEP
    needed = next(n for n in range(1, 5000) if upper_bound(0, n) <= 0.005)
    for _ in range(needed - 1):
        m.record("qa", False, 0.01)
    assert m.state("qa").offset == STEP  # not yet: the upper limit is still above half the bound
    m.record("qa", False, 0.01)
    assert m.state("qa").offset == 0.0


def test_without_a_bound_it_only_counts():
    m = ShadowMonitor()
    for wrong in (True, True, False):
        m.record("chat", wrong, None)
    s = m.state("chat")
    assert s.offset == 0 and s.checks == 3 and s.false_hits == 2 and abs(s.rate - 2 / 3) < 1e-9


def test_answers_compared_exactly_then_by_meaning(encoder):
    chat = {"choices": [{"message": {"role": "assistant", "content": "Vienna is the capital."}}]}
    completion = {"choices": [{"text": "vienna   is the capital."}]}
    assert answer_text(chat) == "Vienna is the capital." and answer_text({"choices": []}) == ""
    never = lambda texts: (_ for _ in ()).throw(AssertionError("no embedding needed"))  # noqa: E731
    assert same_answer(answer_text(chat), answer_text(completion), never, 0.9, greedy=True)
    # greedy: another wording is another answer; sampled: compared by meaning
    assert not same_answer("Vienna is the capital of Austria.", "The capital of Austria is Vienna.", never, 0.9, True)
    assert same_answer("Vienna is the capital of Austria.", "The capital of Austria is Vienna.", encoder.encode, 0.9,
                       greedy=False)
    assert not same_answer("Vienna is the capital of Austria.", "Canberra is the capital of Australia.",
                           encoder.encode, 0.9, greedy=False)
    assert isinstance(encoder.encode(["x"]), np.ndarray)
