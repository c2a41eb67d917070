"""What a question pins down, read off its text: numbers, dates, units, negation, names,
comparison and scope words. Two questions that differ in any of these usually want different
answers however close their embeddings are (sentence encoders barely move on "not", "May 3"
vs "May 4" or "Austria" vs "Australia"), so the verifier compares these signatures.

Two guards look at more than the word sets: ``order`` (the same words with two parts exchanged
around a relation: "convert USD to EUR" vs "convert EUR to USD") and ``deixis`` (a question
pointing at content it does not hold: two users' "how do I solve this problem?" are two
different problems).

Pure regex and word lists, no model: a few tens of microseconds per text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

_WORD = re.compile(r"[A-Za-z][A-Za-z'-]*|\d+(?:[.,]\d+)*")

_NUMBER_WORDS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "twenty": 20, "thirty": 30,
    "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100,
    "thousand": 1000, "million": 10**6, "billion": 10**9, "half": 0.5, "twice": 2, "double": 2,
    "triple": 3, "first": "1th", "second": "2th", "third": "3th", "fourth": "4th", "fifth": "5th",
}
_NUMBER = re.compile(r"(?<![\w.])(\d+(?:,\d{3})*(?:\.\d+)?)(st|nd|rd|th)?(?!\d)", re.I)
_YEAR = re.compile(r"^(1[5-9]\d\d|20\d\d)$")

_MONTHS = {m[:3]: i for i, m in enumerate(
    ["january", "february", "march", "april", "may", "june", "july", "august", "september",
     "october", "november", "december"], 1)}
_MONTH = re.compile(r"\b(jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|"
                    r"aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)\b", re.I)
_WEEKDAY = re.compile(r"\b(mon|tues?|wed(?:nes)?|thu(?:rs)?|fri|sat(?:ur)?|sun)(?:day)\b", re.I)
_RELATIVE = re.compile(r"\b(today|tonight|tomorrow|yesterday|(?:this|next|last) "
                       r"(?:week|month|year|weekend|morning|evening))\b", re.I)

_UNITS = {
    "mm": "mm", "millimeter": "mm", "millimetre": "mm", "cm": "cm", "centimeter": "cm", "centimetre": "cm",
    "m": "m", "meter": "m", "metre": "m", "km": "km", "kilometer": "km", "kilometre": "km", "kms": "km",
    "inch": "in", "inches": "in", "ft": "ft", "foot": "ft", "feet": "ft", "yard": "yd",
    "yd": "yd", "mile": "mi", "mi": "mi", "mg": "mg", "milligram": "mg", "g": "g", "gram": "g",
    "gm": "g", "kg": "kg", "kilo": "kg", "kilogram": "kg", "lb": "lb", "lbs": "lb", "pound": "lb",
    "oz": "oz", "ounce": "oz", "ton": "t", "tonne": "t", "celsius": "C", "centigrade": "C",
    "fahrenheit": "F", "kelvin": "K", "second": "s", "sec": "s", "secs": "s", "minute": "min",
    "min": "min", "mins": "min", "hour": "h", "hr": "h", "hrs": "h", "day": "day", "week": "week",
    "month": "month", "year": "year", "yr": "year", "decade": "decade", "century": "century",
    "kb": "KB", "mb": "MB", "gb": "GB", "tb": "TB", "kbps": "kbps", "mbps": "Mbps", "gbps": "Gbps",
    "dollar": "USD", "usd": "USD", "$": "USD", "euro": "EUR", "eur": "EUR", "€": "EUR", "£": "GBP",
    "gbp": "GBP", "rupee": "INR", "inr": "INR", "rs": "INR", "₹": "INR", "yen": "JPY", "¥": "JPY",
    "ml": "ml", "milliliter": "ml", "liter": "l", "litre": "l", "l": "l", "gallon": "gal",
    "gal": "gal", "cup": "cup", "mph": "mph", "kmph": "km/h", "km/h": "km/h", "kph": "km/h",
    "%": "%", "percent": "%", "hz": "Hz", "ghz": "GHz", "mhz": "MHz", "watt": "W", "w": "W",
    "kw": "kW", "volt": "V", "v": "V", "calorie": "kcal", "kcal": "kcal", "mah": "mAh",
}
# Short, ambiguous units ("m", "g", "in", "l", "second") count only right after a number.
_AMBIGUOUS = {"m", "g", "l", "min", "sec", "second", "w", "v", "gm", "rs", "mi"}


def _unit_key(word: str) -> str:
    """`word` without a plural s when the singular is a unit ("pounds" -> "pound")."""
    return word[:-1] if word.endswith("s") and word[:-1] in _UNITS else word

_NEGATION = re.compile(r"\b(not|no|never|without|none|nobody|nothing|neither|nor|cannot|hardly|"
                       r"barely|lack|lacks|lacking)\b|n't\b", re.I)

# Comparison words -> (axis, direction): "bigger" and "larger" agree, "more" and "less" don't.
_COMPARISON = {}
for _axis, _up, _down in [
    ("size", "more greater larger bigger higher increase increases increased increasing raise rise "
             "above over exceed exceeds taller longer heavier wider deeper", "less fewer smaller lower "
             "decrease decreases decreased decreasing reduce reduced drop below under shorter lighter "
             "narrower shallower"),
    ("extreme", "most maximum max largest biggest highest greatest tallest longest heaviest top",
                "least minimum min smallest lowest fewest shortest lightest bottom"),
    ("quality", "better best good great", "worse worst bad poor"),
    ("order", "after later last latest next newer newest following", "before earlier first "
              "previous prior older oldest"),
    ("speed", "faster fastest quicker quickest", "slower slowest"),
    ("price", "expensive costlier costliest pricier", "cheaper cheapest affordable inexpensive"),
    ("age", "elder eldest", "younger youngest"),
    ("difficulty", "harder hardest difficult tougher", "easier easiest easy simpler simplest"),
    ("risk", "riskier dangerous unsafe", "safer safest safe"),
    ("sign", "positive plus", "negative minus"),
    ("parity", "odd", "even"),
    ("direction", "ascending upward up", "descending downward down"),
    ("temperature", "hotter warmer hot", "colder cooler cold"),
    ("wealth", "richer richest rich", "poorer poorest poor"),
    ("strength", "stronger strongest", "weaker weakest"),
]:
    for _w in _up.split():
        _COMPARISON[_w] = f"{_axis}+"
    for _w in _down.split():
        _COMPARISON[_w] = f"{_axis}-"

_SCOPE = {
    **dict.fromkeys("all every each always everyone everybody everything everywhere entire whole "
                    "universally".split(), "all"),
    **dict.fromkeys("some sometimes someone somebody something somewhere partial partially several "
                    "few certain occasionally".split(), "some"),
    **dict.fromkeys("none never nobody nothing nowhere".split(), "none"),
    "any": "any", "anyone": "any", "anything": "any", "only": "only", "most": "most",
    "many": "many", "both": "both", "either": "either",
}

# Capitalised words that are not names (sentence starters, pronouns, question words, ...).
_NOT_NAMES = set("""january february march april may june july august september october november december
monday tuesday wednesday thursday friday saturday sunday i i'm i've i'd i'll a an the what why how when where which who whom whose is are
was were do does did can could should would will shall may might must have has had if in on at for
to of and or but so please hi hello hey thanks thank yes no ok okay dear mr mrs ms dr
""".split())


# Words between two exchanged parts that make the exchange harmless: "X and Y", "X or Y", "X vs Y".
_SYMMETRIC = set("and or nor vs versus v with between plus the a an".split())

# A pointer at content the text does not hold: "this problem", "the following code", "my
# essay", "the question below". A demonstrative or possessive and up to two words before a noun
# that names a piece of content; "below"/"above" only right after such a noun.
_CONTENT = (r"(?:problems?|questions?|code|program|snippet|function|script|images?|pictures?|photos?|pic|"
            r"screenshot|equations?|expression|integral|sentences?|paragraph|passage|text|riddle|puzzle|"
            r"error|message|query|statement|circuit|diagram|graph|figure|table|video|song|poem|essay|"
            r"document|file|link|output|example|series|sequence|recursion|proof|situation|scenario|"
            r"word|phrase|quote|lines?)")
_DEIXIS = re.compile(rf"\b(?:this|that|these|those|following|attached|given|my|above)\s+(?:[\w'-]+\s+){{0,2}}?"
                     rf"{_CONTENT}\b|\b{_CONTENT}\s+(?:given\s+)?(?:below|above)\b", re.I)


@dataclass(frozen=True)
class Signature:
    """The parts of a question that must agree for two questions to share an answer."""

    words: frozenset[str]
    numbers: frozenset[str]
    dates: frozenset[str]
    units: frozenset[str]
    negation: int  # parity of negation words: "not ... without" is as positive as neither
    names: frozenset[str]
    comparison: frozenset[str]
    scope: frozenset[str]
    sequence: tuple[str, ...]  # the words in order, lower case
    deictic: bool  # points at content it does not hold


def _number(value: str, ordinal: str | None) -> str:
    """Canonical spelling: "1,000" == "1000" == "1000.0"; any ordinal suffix is "th"."""
    return f"{float(value.replace(',', '')):g}" + ("th" if ordinal else "")


@lru_cache(maxsize=65536)
def signature(text: str) -> Signature:
    """Signature of `text` (cached: a stored question is verified against many queries)."""
    lower = text.lower()
    words = [w.lower() for w in _WORD.findall(text)]
    numbers: set[str] = set()
    dates: set[str] = set()
    for m in _NUMBER.finditer(text):
        if _YEAR.match(m.group(1)) and not m.group(2):
            dates.add(m.group(1))
        else:
            numbers.add(_number(m.group(1), m.group(2)))
    for w in words:
        if w in _NUMBER_WORDS:
            v = _NUMBER_WORDS[w]
            numbers.add(v if isinstance(v, str) else f"{float(v):g}")
    for m in _MONTH.finditer(text):
        tok = m.group(1)
        beside_number = re.match(r"\s*\d", text[m.end():]) or re.search(r"\d\s*$", text[: m.start()])
        if tok.lower() in ("mar", "may", "jan", "jun", "oct", "dec", "sep") and tok[0].islower() and not beside_number:
            continue  # "may", "mar", "dec" as plain words: months only capitalised or beside a day
        dates.add(f"month{_MONTHS[tok[:3].lower()]}")
    dates |= {f"day:{m.group(1).lower()[:3]}" for m in _WEEKDAY.finditer(text)}
    dates |= {m.group(1).lower() for m in _RELATIVE.finditer(text)}
    units = {_UNITS[_unit_key(w)] for w in re.findall(r"(?<![\w/])(km/h|[a-z]+)(?![\w/])", lower)
             if _unit_key(w) in _UNITS and _unit_key(w) not in _AMBIGUOUS}
    units |= {_UNITS[_unit_key(m.group(1))] for m in re.finditer(r"\d\s*([a-z]+|[%$€£₹¥])", lower)
              if _unit_key(m.group(1)) in _UNITS}
    units |= {_UNITS[c] for c in re.findall(r"[$€£₹¥%]", text)}
    negation = len(_NEGATION.findall(lower)) % 2
    names = set()
    for sentence in re.split(r"(?<=[.?!:;\n])\s+", text):
        for i, w in enumerate(_WORD.findall(sentence)):
            if i > 0 and w[0].isupper() and w.lower() not in _NOT_NAMES:
                names.add(w.lower())
    comparison = {_COMPARISON[w] for w in words if w in _COMPARISON}
    scope = {_SCOPE[w] for w in words if w in _SCOPE}
    return Signature(frozenset(words), frozenset(numbers), frozenset(dates), frozenset(units), negation,
                     frozenset(names), frozenset(comparison), frozenset(scope), tuple(words),
                     bool(_DEIXIS.search(text)))


def _names_mismatch(a: Signature, b: Signature) -> bool:
    """A name on one side must appear (any case) on the other: lower-casing is not a new name."""
    return bool(a.names - b.words) or bool(b.names - a.words)


def _exchanged(a: Signature, b: Signature) -> bool:
    """The same words, with two parts X and Y exchanged around a middle M that is not a symmetric
    link: P X M Y S vs P Y M X S, M not only "and"/"or"/"vs"... (an exchange of two adjacent
    parts, M empty, is a moved phrase: "in Python, how do I..." vs "how do I ... in Python")."""
    x, y = a.sequence, b.sequence
    if x == y or len(x) != len(y) or sorted(x) != sorted(y):
        return False
    start = next(i for i in range(len(x)) if x[i] != y[i])
    end = next(i for i in range(len(x), 0, -1) if x[i - 1] != y[i - 1])
    mx, my = x[start:end], y[start:end]
    n = len(mx)
    for i in range(1, n - 1):  # X = mx[:i]
        if my[n - i:] != mx[:i]:
            continue
        for j in range(1, n - i):  # Y = mx[n - j:], M = mx[i:n - j]
            middle = mx[i:n - j]
            if my[:j] == mx[n - j:] and my[j:n - i] == middle and not set(middle) <= _SYMMETRIC:
                return True
    return False


GUARDS = {
    "number": lambda a, b: a.numbers != b.numbers,
    "date": lambda a, b: a.dates != b.dates,
    "unit": lambda a, b: a.units != b.units,
    "negation": lambda a, b: a.negation != b.negation,
    "name": _names_mismatch,
    "comparison": lambda a, b: a.comparison != b.comparison,
    "scope": lambda a, b: a.scope != b.scope,
    "order": _exchanged,
    "deixis": lambda a, b: a.deictic or b.deictic,
}


def mismatches(query: str, stored: str) -> list[str]:
    """Names of the guards on which two questions disagree (empty: structurally the same)."""
    a, b = signature(query), signature(stored)
    return [name for name, differs in GUARDS.items() if differs(a, b)]
