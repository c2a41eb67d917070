"""Repeats: the same question typed again, recognised from the text alone.

A repeat differs from the stored question only in case, spacing, sentence punctuation,
contractions ("what's" / "what is"), a greeting or thanks around it ("Hi!", "Please tell me:",
"Thanks!") and at most one typo. Such a query wants the stored answer whatever its embedding
says: a typo or a "Thanks!" moves MiniLM's cosine to 0.7-0.97 on short questions, below the
calibrated thresholds, so without this the verified cache missed ~40 % of repeats. A repeat is
accepted at any similarity (the index must still propose it among its top-k candidates).

What is not stripped, on purpose: instructions that change the answer ("Please answer
briefly."), symbols inside a token ("C++" is not "C", "3.5" is not "35"), and word swaps
between two known words ("causal" / "casual"): a typo needs one side outside the encoder's
vocabulary. Regexes and the MiniLM WordPiece vocabulary only; a few microseconds a pair.
"""

from __future__ import annotations

import re
from functools import lru_cache

# Contractions spelled out, so "what's" == "what is" (and "isn't" stays a negation: "is not").
_CONTRACTIONS = [(re.compile(a), b) for a, b in [
    (r"\bcan't\b", "can not"), (r"\bwon't\b", "will not"), (r"\bcannot\b", "can not"), (r"\bain't\b", "is not"),
    (r"n't\b", " not"), (r"'re\b", " are"), (r"'m\b", " am"), (r"'ve\b", " have"), (r"'ll\b", " will"),
    (r"'d\b", " would"),
    (r"\b(it|that|what|there|here|where|who|how|he|she|this|which|when|why|let)'s\b", r"\1 is"),
]]
# Greetings and request framing before a question, thanks after it: politeness, not content.
_LEADING = re.compile(
    r"^(?:(?:hi|hello|hey|greetings|dear all)\b[\s,!.:;-]*"
    r"|(?:please|kindly)\b[\s,:]*"
    r"|(?:(?:can|could|would|will) you (?:please )?)?(?:tell me|let me know)\b[\s,:]*"
    r"|(?:quick question|question|i was wondering|i wonder|just wondering|i would like to know|i want to know"
    r"|do you know)\b[\s,:;-]*)+", re.I)
_TRAILING = re.compile(
    r"(?:[\s,.!;:-]*(?:thanks|thank you|thx|cheers|please|many thanks"
    r"|any help (?:is |would be )?(?:much |greatly )?appreciated)(?: (?:so much|a lot|in advance))?)+[\s.!]*$",
    re.I)
# Sentence punctuation and quotes at a token's edge ("C++", "3.5", "f(x)" keep theirs inside).
_EDGE_PUNCT = re.compile(r"(?:(?<=\s)|^)[\"'(\[]+|[\"')\].,;:!?]+(?=\s|$)")
_TYPO_MIN_LEN = 5  # shorter words are too often other words one edit away ("form"/"from", "Iran"/"Iraq")


def _unframed(text: str) -> str:
    """`text` without the politeness around it; `text` itself if that is all there is ("Hi!")."""
    return _LEADING.sub("", _TRAILING.sub("", text).strip()).strip() or text


def question(text: str) -> str:
    """The question without the greeting before it and the thanks after it, as typed otherwise:
    a second reading for the category classifier ("Hi!" or "Thanks!" moved 6 % of held-back
    queries to another category, and a repeat in another category cannot hit)."""
    return _unframed(" ".join(text.split()))


@lru_cache(maxsize=65536)
def normalise(text: str) -> tuple[str, ...]:
    """The words of `text` with case, spacing, edge punctuation, contractions and politeness
    framing taken out (cached: stored questions are compared against many queries)."""
    t = " ".join(text.casefold().replace("\u2019", "'").split())
    for pattern, repl in _CONTRACTIONS:
        t = pattern.sub(repl, t)
    return tuple(_unframed(" ".join(_EDGE_PUNCT.sub(" ", t).split())).split())


@lru_cache(maxsize=1)
def _vocabulary() -> frozenset[str]:
    """Whole words of the MiniLM WordPiece vocabulary: a word list that ships with the encoder."""
    from controller.embeddings import minilm_vocabulary

    return minilm_vocabulary()


def _one_edit(a: str, b: str) -> bool:
    """Damerau distance exactly 1: one letter changed, dropped, added, or two neighbours swapped."""
    if len(a) == len(b):
        diff = [i for i in range(len(a)) if a[i] != b[i]]
        return len(diff) == 1 or (len(diff) == 2 and diff[1] == diff[0] + 1
                                  and a[diff[0]] == b[diff[1]] and a[diff[1]] == b[diff[0]])
    if abs(len(a) - len(b)) != 1:
        return False
    short, long_ = (a, b) if len(a) < len(b) else (b, a)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def is_typo(a: str, b: str) -> bool:
    """`a` and `b` are one word, one of them mistyped: letters only, long enough, one edit
    apart, and not both known words."""
    if not (a.isalpha() and b.isalpha()) or min(len(a), len(b)) < _TYPO_MIN_LEN:
        return False
    vocabulary = _vocabulary()
    return not (a in vocabulary and b in vocabulary) and _one_edit(a, b)


def is_repeat(query: str, stored: str) -> bool:
    """Whether `query` is `stored` typed again (see the module doc); never for an empty text."""
    a, b = normalise(query), normalise(stored)
    if not a or len(a) != len(b):
        return False
    diffs = [(x, y) for x, y in zip(a, b) if x != y]
    return not diffs or (len(diffs) == 1 and is_typo(*diffs[0]))
