"""Parallel English -> French data: numbers, years, dates and amounts written as words by num2words.

The generator is seeded and pure, so the corpus is the same on every machine. The held-out
test set is drawn first from its own seed; training pairs whose English side is in it are
dropped, so train and test never share a source sentence.
"""

from __future__ import annotations

import random
from pathlib import Path

from num2words import num2words

MONTHS = [
    ("January", "janvier"), ("February", "février"), ("March", "mars"), ("April", "avril"),
    ("May", "mai"), ("June", "juin"), ("July", "juillet"), ("August", "août"),
    ("September", "septembre"), ("October", "octobre"), ("November", "novembre"), ("December", "décembre"),
]

# (English template, French template): each slot is filled with the same quantity in both languages.
AMOUNT_TEMPLATES = [
    ("it costs {}", "cela coûte {}"), ("the total is {}", "le total est de {}"),
    ("please pay {}", "veuillez payer {}"), ("I received {}", "j'ai reçu {}"), ("{}", "{}"),
]
NUMBER_TEMPLATES = [
    ("{}", "{}"), ("there are {} people", "il y a {} personnes"), ("we sold {} books", "nous avons vendu {} livres"),
    ("the number is {}", "le nombre est {}"), ("page {}", "page {}"),
]
DATE_TEMPLATES = [
    ("on {}", "le {}"), ("the meeting is on {}", "la réunion a lieu le {}"), ("born on {}", "né le {}"),
]
YEAR_TEMPLATES = [("in {}", "en {}"), ("the year {}", "l'année {}")]
ORDINAL_TEMPLATES = [("the {} floor", "le {} étage"), ("she finished {}", "elle a fini {}")]


def _number(rng: random.Random) -> int:
    """Mostly small numbers, some up to a million: every magnitude is seen often."""
    digits = rng.choice([1, 2, 2, 3, 3, 4, 4, 5, 6])
    return rng.randrange(0 if digits == 1 else 10 ** (digits - 1), 10**digits)


def _amount(rng: random.Random) -> tuple[str, str]:
    euros = _number(rng) if rng.random() < 0.7 else rng.randrange(1, 100)
    cents = rng.randrange(1, 100) if rng.random() < 0.6 else 0
    value = float(f"{euros}.{cents:02d}")
    return (num2words(value, lang="en", to="currency", currency="EUR"),
            num2words(value, lang="fr", to="currency", currency="EUR"))


def _date(rng: random.Random) -> tuple[str, str]:
    day, (en_month, fr_month), year = rng.randrange(1, 29), rng.choice(MONTHS), rng.randrange(1900, 2100)
    en = f"{en_month} {num2words(day, lang='en', to='ordinal')}, {num2words(year, lang='en', to='year')}"
    fr_day = "premier" if day == 1 else num2words(day, lang="fr")
    fr = f"{fr_day} {fr_month} {num2words(year, lang='fr', to='year')}"
    return en, fr


def make_pair(rng: random.Random) -> tuple[str, str]:
    """One (English, French) sentence pair."""
    kind = rng.random()
    if kind < 0.3:
        (en_t, fr_t), (en, fr) = rng.choice(AMOUNT_TEMPLATES), _amount(rng)
    elif kind < 0.6:
        n = _number(rng)
        (en_t, fr_t), (en, fr) = rng.choice(NUMBER_TEMPLATES), (num2words(n, lang="en"), num2words(n, lang="fr"))
    elif kind < 0.8:
        (en_t, fr_t), (en, fr) = rng.choice(DATE_TEMPLATES), _date(rng)
    elif kind < 0.9:
        y = rng.randrange(1000, 2100)
        (en_t, fr_t), (en, fr) = rng.choice(YEAR_TEMPLATES), (num2words(y, lang="en", to="year"), num2words(y, lang="fr", to="year"))
    else:
        n = rng.randrange(1, 100)
        (en_t, fr_t), (en, fr) = rng.choice(ORDINAL_TEMPLATES), (num2words(n, lang="en", to="ordinal"), num2words(n, lang="fr", to="ordinal"))
    return en_t.format(en), fr_t.format(fr)


def make_splits(train_size: int = 40000, test_size: int = 1000, train_seed: int = 1, test_seed: int = 2
                ) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(train, test): distinct test sources from test_seed, training pairs never share a test source."""
    rng = random.Random(test_seed)
    test: dict[str, str] = {}
    while len(test) < test_size:
        en, fr = make_pair(rng)
        test.setdefault(en, fr)
    rng = random.Random(train_seed)
    train = []
    while len(train) < train_size:
        en, fr = make_pair(rng)
        if en not in test:
            train.append((en, fr))
    return train, list(test.items())


def write_tsv(pairs: list[tuple[str, str]], path: str | Path) -> None:
    Path(path).write_text("".join(f"{en}\t{fr}\n" for en, fr in pairs), encoding="utf-8")


def read_tsv(path: str | Path) -> list[tuple[str, str]]:
    """Pairs from a tab-separated file (source<TAB>reference per line); raises ValueError on a bad line."""
    pairs = []
    for i, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise ValueError(f"{path}:{i}: expected 'source<TAB>reference'")
        pairs.append((parts[0], parts[1]))
    if not pairs:
        raise ValueError(f"{path}: no sentence pairs")
    return pairs
