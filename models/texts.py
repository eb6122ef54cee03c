"""English sentences of our own for calibration and evaluation (no dataset download).

A deterministic generator (``random.Random(SEED)``) fills hand-written templates from word lists
(people, verbs, objects, places, times, numbers, everyday and technical topics), optionally joins
two clauses into a longer sentence, and adds a few dozen hand-written sentences. Every sentence has
5 to 40 words. The pool is de-duplicated, shuffled once with the fixed seed and cut into two
disjoint parts: the first ``CALIB_POOL`` sentences for calibration, the rest for evaluation.

- ``calibration_sentences(n=512)``: the first n of the calibration part (n <= CALIB_POOL).
- ``evaluation_sentences(n=256)``: the first n of the evaluation part (n <= EVAL_POOL).
- ``all_sentences()``: the whole pool.
"""

from __future__ import annotations

import functools
import random

SEED = 20240611
CALIB_POOL = 800
EVAL_POOL = 400
MIN_WORDS, MAX_WORDS = 5, 40

PEOPLE = [
    "my neighbour", "the engineer", "our teacher", "a young doctor", "the old fisherman", "my sister",
    "the new manager", "a tired student", "the pilot", "her grandfather", "the baker", "a nurse",
    "the mayor", "our team lead", "the librarian", "a curious child", "the farmer", "his colleague",
    "the software developer", "a retired sailor", "the chef", "the researcher", "my cousin", "the driver",
]
NAMES = ["Anna", "Tom", "Priya", "Kenji", "Lucia", "Omar", "Sofia", "Mateo", "Ines", "David", "Mei", "Jonas"]
VERBS_PAST = [
    "repaired", "painted", "sold", "found", "borrowed", "cleaned", "described", "photographed",
    "ordered", "returned", "inspected", "carried", "forgot", "measured", "designed", "lost",
]
OBJECTS = [
    "an old bicycle", "the kitchen table", "a red umbrella", "the broken laptop", "a box of apples",
    "the wooden fence", "a small boat", "the garden hose", "a pair of boots", "the printer",
    "a cup of coffee", "the train tickets", "a heavy suitcase", "the map of the city", "a blue kite",
    "the spare keys", "a birthday cake", "the radio", "a stack of letters", "the car battery",
]
PLACES = [
    "in the park", "at the station", "near the harbour", "in the library", "on the roof",
    "at the market", "in the mountains", "behind the school", "in a small village", "at the airport",
    "in the office", "by the river", "at the hospital", "in the garage", "on the beach", "downtown",
]
TIMES = [
    "yesterday", "last week", "this morning", "on Monday", "after lunch", "late at night",
    "two days ago", "in the spring", "before dawn", "during the storm", "every Sunday", "last summer",
]
ADJ = [
    "quiet", "noisy", "bright", "expensive", "cheap", "crowded", "empty", "beautiful", "strange",
    "useful", "slow", "fast", "warm", "cold", "fragile", "reliable",
]
TOPICS_TECH = [
    "the compiler", "the database", "the neural network", "the web server", "the battery controller",
    "the new sensor", "the search index", "the operating system", "the network switch", "the model",
    "the matrix multiplication kernel", "the cache", "the build system", "the translation model",
]
TECH_VERBS = [
    "crashed", "slowed down", "ran out of memory", "returned wrong results", "timed out",
    "used too much power", "started faster", "passed all tests", "lost its connection", "overheated",
]
TECH_FIXES = [
    "after the update", "when the load increased", "once we changed the configuration",
    "on the older machines", "under heavy traffic", "with the larger batch size",
    "after we quantized the weights", "when two threads wrote at once", "during the nightly build",
]
FOODS = ["soup", "rice", "bread", "pasta", "salad", "fresh fish", "lentils", "pancakes", "curry", "cheese"]
WEATHER = ["rain", "snow", "fog", "strong wind", "sunshine", "a heat wave", "thunderstorms", "frost"]
CITIES = ["Lisbon", "Nairobi", "Osaka", "Montreal", "Krakow", "Lima", "Oslo", "Hanoi", "Cairo", "Perth"]
UNITS = ["kilometres", "minutes", "euros", "litres", "pages", "people", "degrees", "hours", "metres"]
FEELINGS = ["happy", "worried", "surprised", "annoyed", "relieved", "confused", "proud", "bored"]
CONNECTORS = ["and", "but", "so", "because", "although", "while", "after which", "and then"]
QUESTIONS = [
    "Where did {p} put {o}?",
    "Why was the meeting {place} moved to {t2}?",
    "How many {u} is it from here to {c}?",
    "Could you tell {n} that {o} is ready?",
    "Does {tech} still {tv_base} when the cache is empty?",
    "What did {p} think of the {a} restaurant {place}?",
    "Is it true that {n} {v} {o} {t}?",
]
TECH_BASE = ["crash", "slow down", "time out", "overheat", "lose its connection", "return wrong results"]

TEMPLATES = [
    "{P} {v} {o} {place} {t}.",
    "{N} {v} {o} {t}, and nobody noticed.",
    "{T}, {p} {v} {o} {place}.",
    "The {a} shop {place} sells {food} for {num} {cur}.",
    "{P} said there was {w} in {c} {t}.",
    "{Tech} {tv} {tf}.",
    "We noticed that {tech} {tv} {tf}, so we rolled back the change.",
    "{N} walked {num} kilometres {place} {t} and felt {f}.",
    "It took {p} {num} hours to fix {o}.",
    "There were about {num} {u} left {t}.",
    "{N} cooked {food} for the whole family {t}.",
    "{P} was {f} to see {o} {place}.",
    "The flight to {c} was delayed by {num} minutes because of {w}.",
    "If {tech} {tv} again, please tell {n} before {t2}.",
    "{N} and {n2} met {place} {t} to talk about {tech}.",
    "Please bring {o} to the {a} room on the {ord} floor.",
    "{P} thinks that {food} tastes better with a little salt.",
    "According to the report, {tech} {tv} {num} times {t}.",
    "In {c}, {w} is common in winter, so people carry {o}.",
    "{N} wrote a short note: the {a} printer {place} is broken again.",
]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "tenth"]
CURRENCIES = ["euros", "dollars", "pounds", "yen"]

HANDWRITTEN = [
    "The quick brown fox jumps over the lazy dog.",
    "Quantized models are smaller, but they can lose a little accuracy.",
    "Please close the window before you leave the house.",
    "The train was late again, so I missed the beginning of the concert.",
    "She has been learning Portuguese for three years and now reads novels in it.",
    "A good compiler turns a large graph into a small and fast one without changing its answers.",
    "We should water the tomatoes every evening while the weather stays this hot.",
    "He apologised for the noise and promised to finish the repairs by Friday.",
    "The museum opens at nine, but the queue starts forming long before that.",
    "My phone battery dies by noon since the last software update.",
    "Can you recommend a quiet cafe where I can work for a few hours?",
    "The children built a sandcastle and watched the tide wash it away.",
    "Our experiment failed twice before we found the loose cable under the desk.",
    "Fresh bread smells wonderful early in the morning.",
    "The committee will announce its decision after the holidays.",
    "I could not find my keys anywhere, until I looked inside the fridge.",
    "Matrix multiplication dominates the running time of a transformer encoder.",
    "The river flooded the lower part of the town after a week of heavy rain.",
    "Thank you for your help with the move; we could not have done it alone.",
    "The recipe calls for two eggs, a cup of flour and a pinch of salt.",
    "Turn left at the bakery and the post office is on your right.",
    "Nobody expected the small team from the north to win the championship.",
    "The doctor told him to rest for a week and drink plenty of water.",
    "Every weight in the layer was rounded to one of three values.",
    "The old lighthouse has guided ships along this coast for more than a century.",
    "Because the server ran out of disk space, the nightly backup silently stopped.",
    "She laughed so hard that she nearly dropped her coffee.",
    "Let us meet at the corner of the square at half past six.",
    "The price of the tickets went up by ten percent this year.",
    "Birds were singing in the hedge as the sun came up over the hills.",
    "I would rather walk than wait forty minutes for the next bus.",
    "The translation was accurate, but it sounded a bit stiff and formal.",
    "After the storm, the whole street was covered in leaves and broken branches.",
    "Remember to save your work often when the power keeps going out.",
    "The library extended its opening hours during the exam period.",
    "He spent the afternoon reading an old book about the history of maps.",
    "Low-bit weights let large language models run on phones and small boards.",
    "The cat refused to come down from the tree until the rain started.",
    "We compared the embeddings of both models and found them almost identical.",
    "Is there a pharmacy open near here on a Sunday evening?",
    "The meeting ran long, so we ordered pizza and kept working.",
    "Snow fell all night, and in the morning the roads were closed.",
    "Short sentences are easy to read.",
    "The garden is full of weeds.",
    "Write the tests first, then make them pass.",
]


def _fill(rng: random.Random, template: str) -> str:
    n, n2 = rng.sample(NAMES, 2)
    tech = rng.choice(TOPICS_TECH)
    values = {
        "p": rng.choice(PEOPLE), "n": n, "n2": n2, "v": rng.choice(VERBS_PAST), "o": rng.choice(OBJECTS),
        "place": rng.choice(PLACES), "t": rng.choice(TIMES), "t2": rng.choice(["tomorrow", "the weekend", "noon", "Friday"]),
        "a": rng.choice(ADJ), "food": rng.choice(FOODS), "num": str(rng.choice([2, 3, 5, 7, 12, 15, 20, 40, 100, 250])),
        "cur": rng.choice(CURRENCIES), "w": rng.choice(WEATHER), "c": rng.choice(CITIES), "u": rng.choice(UNITS),
        "f": rng.choice(FEELINGS), "tech": tech, "tv": rng.choice(TECH_VERBS), "tf": rng.choice(TECH_FIXES),
        "tv_base": rng.choice(TECH_BASE), "ord": rng.choice(ORDINALS),
    }
    for k in ("p", "n", "t", "tech"):
        values[k.upper() if k != "tech" else "Tech"] = values[k][0].upper() + values[k][1:]
    return template.format(**values)


def _clause(rng: random.Random) -> str:
    return _fill(rng, rng.choice(TEMPLATES))


def _sentence(rng: random.Random) -> str:
    r = rng.random()
    if r < 0.15:
        return _fill(rng, rng.choice(QUESTIONS))
    first = _clause(rng)
    if r < 0.55:
        return first
    # Join two (sometimes three) clauses for longer sentences.
    parts = [first.rstrip(".")]
    for _ in range(1 if r < 0.9 else 2):
        nxt = _clause(rng).rstrip(".")
        if nxt.split()[0] not in NAMES:
            nxt = nxt[0].lower() + nxt[1:]
        parts.append(rng.choice(CONNECTORS) + " " + nxt)
    return ", ".join(parts) + "."


@functools.lru_cache(maxsize=1)
def all_sentences() -> tuple[str, ...]:
    """The whole deterministic pool (CALIB_POOL + EVAL_POOL unique sentences, shuffled)."""
    rng = random.Random(SEED)
    seen: set[str] = set()
    pool: list[str] = []
    for s in HANDWRITTEN:
        assert MIN_WORDS <= len(s.split()) <= MAX_WORDS, s
        if s not in seen:
            seen.add(s)
            pool.append(s)
    while len(pool) < CALIB_POOL + EVAL_POOL:
        s = _sentence(rng)
        if s in seen or not MIN_WORDS <= len(s.split()) <= MAX_WORDS:
            continue
        seen.add(s)
        pool.append(s)
    rng.shuffle(pool)
    return tuple(pool)


def _splits() -> tuple[tuple[str, ...], tuple[str, ...]]:
    pool = all_sentences()
    calib, evals = pool[:CALIB_POOL], pool[CALIB_POOL:]
    assert not set(calib) & set(evals), "calibration and evaluation sentences overlap"
    return calib, evals


def calibration_sentences(n: int = 512) -> list[str]:
    """``n`` calibration sentences (deterministic; never in the evaluation set)."""
    calib, _ = _splits()
    if not 0 <= n <= len(calib):
        raise ValueError(f"n must be in [0, {len(calib)}], got {n}")
    return list(calib[:n])


def evaluation_sentences(n: int = 256) -> list[str]:
    """``n`` evaluation sentences (deterministic; never in the calibration set)."""
    _, evals = _splits()
    if not 0 <= n <= len(evals):
        raise ValueError(f"n must be in [0, {len(evals)}], got {n}")
    return list(evals[:n])
