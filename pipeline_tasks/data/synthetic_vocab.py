"""The words and user attributes the synthetic world is drawn from, and how an item's text is written.

Each topic has nouns and adjectives that say what an item is about; an item's title and
description are drawn from its topic's words, its neighbourhood's two focus nouns first (items of
one neighbourhood read alike) and, for a part of a series, the series' name and part number (what
real catalogues print: "Dune Messiah", "Season 2", "Vol. 3"). A share of texts carries harmless
mess (markup, entities, odd spacing, decomposed accents) that the clean stage normalises.

Longer than most modules on purpose: most of it is the word lists themselves.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass

import numpy as np
import pandas as pd

from pipeline_tasks.core import constants as C

# Per-topic vocabulary: nouns and adjectives that say which topic an item is about.
TOPICS: dict[str, dict[str, list[str]]] = {
    "space": {
        "nouns": [
            "orbit",
            "rocket",
            "nebula",
            "galaxy",
            "comet",
            "astronaut",
            "telescope",
            "black hole",
            "moon landing",
            "space station",
            "supernova",
            "satellite",
            "launch pad",
            "exoplanet",
            "asteroid",
        ],
        "adjectives": ["interstellar", "lunar", "cosmic", "orbital", "solar", "celestial", "galactic", "stellar"],
    },
    "cooking": {
        "nouns": [
            "sourdough",
            "risotto",
            "cast iron pan",
            "spice rack",
            "pastry",
            "broth",
            "kitchen",
            "recipe",
            "dumpling",
            "marinade",
            "chef",
            "bread oven",
            "curry",
            "knife skills",
            "dessert",
        ],
        "adjectives": ["slow-cooked", "crispy", "homemade", "savory", "seasonal", "rustic", "spicy", "buttery"],
    },
    "football": {
        "nouns": [
            "goalkeeper",
            "striker",
            "penalty",
            "derby",
            "league",
            "stadium",
            "midfield",
            "transfer window",
            "world cup",
            "free kick",
            "offside rule",
            "manager",
            "cup final",
            "hat-trick",
            "dugout",
        ],
        "adjectives": [
            "legendary",
            "relegated",
            "unbeaten",
            "tactical",
            "last-minute",
            "title-winning",
            "underdog",
            "attacking",
        ],
    },
    "jazz": {
        "nouns": [
            "saxophone",
            "trumpet",
            "bebop",
            "improvisation",
            "big band",
            "double bass",
            "jam session",
            "swing",
            "piano trio",
            "blue note",
            "club",
            "standard",
            "drummer",
            "solo",
            "chord changes",
        ],
        "adjectives": ["smoky", "cool", "modal", "swinging", "late-night", "bluesy", "improvised", "soulful"],
    },
    "gardening": {
        "nouns": [
            "compost",
            "tomato",
            "greenhouse",
            "seedling",
            "rose",
            "soil",
            "allotment",
            "herb garden",
            "pruning",
            "raised bed",
            "orchard",
            "perennial",
            "watering can",
            "hedge",
            "vegetable patch",
        ],
        "adjectives": ["organic", "blooming", "shady", "evergreen", "fertile", "wild", "potted", "hardy"],
    },
    "crime": {
        "nouns": [
            "detective",
            "murder",
            "alibi",
            "suspect",
            "heist",
            "inspector",
            "witness",
            "crime scene",
            "forensics",
            "smuggler",
            "cold case",
            "interrogation",
            "informant",
            "gangster",
            "verdict",
        ],
        "adjectives": ["gritty", "deadly", "unsolved", "noir", "ruthless", "hidden", "silent", "corrupt"],
    },
    "finance": {
        "nouns": [
            "stock market",
            "dividend",
            "portfolio",
            "inflation",
            "interest rate",
            "hedge fund",
            "budget",
            "pension",
            "startup",
            "bond",
            "index fund",
            "bank",
            "crash",
            "mortgage",
            "tax return",
        ],
        "adjectives": ["bullish", "volatile", "frugal", "profitable", "risky", "long-term", "passive", "global"],
    },
    "travel": {
        "nouns": [
            "backpack",
            "road trip",
            "island",
            "hostel",
            "passport",
            "mountain pass",
            "train journey",
            "beach",
            "old town",
            "ferry",
            "itinerary",
            "desert",
            "street market",
            "harbour",
            "camino",
        ],
        "adjectives": ["remote", "coastal", "sunlit", "budget", "scenic", "hidden", "tropical", "alpine"],
    },
    "wildlife": {
        "nouns": [
            "wolf",
            "elephant",
            "coral reef",
            "savanna",
            "eagle",
            "rainforest",
            "migration",
            "predator",
            "whale",
            "jaguar",
            "penguin colony",
            "wetland",
            "bear",
            "ecosystem",
            "hummingbird",
        ],
        "adjectives": ["endangered", "wild", "nocturnal", "untamed", "migratory", "arctic", "native", "rare"],
    },
    "programming": {
        "nouns": [
            "compiler",
            "algorithm",
            "database",
            "python",
            "debugger",
            "open source",
            "cloud",
            "API",
            "refactoring",
            "unit test",
            "kernel",
            "framework",
            "data structure",
            "git",
            "microservice",
        ],
        "adjectives": ["functional", "scalable", "concurrent", "clean", "legacy", "distributed", "typed", "fast"],
    },
    "history": {
        "nouns": [
            "empire",
            "revolution",
            "castle",
            "pharaoh",
            "medieval village",
            "dynasty",
            "battle",
            "archive",
            "cathedral",
            "monarch",
            "treaty",
            "silk road",
            "legion",
            "manuscript",
            "ruins",
        ],
        "adjectives": ["ancient", "forgotten", "imperial", "victorian", "bronze age", "royal", "feudal", "lost"],
    },
    "fitness": {
        "nouns": [
            "marathon",
            "kettlebell",
            "yoga",
            "workout",
            "sprint",
            "stretching",
            "gym",
            "deadlift",
            "cycling",
            "core strength",
            "interval training",
            "recovery",
            "treadmill",
            "triathlon",
            "squat",
        ],
        "adjectives": [
            "high-intensity",
            "daily",
            "beginner",
            "explosive",
            "endurance",
            "lean",
            "athletic",
            "full-body",
        ],
    },
}

# Names, some with accents: a few items spell them in decomposed (NFD) form, which clean normalises.
NAMES = [
    "Ada Brennan",
    "Renée Laurent",
    "José Ortega",
    "Zoë Hart",
    "Björn Lind",
    "Mara Okafor",
    "Jonas Weber",
    "Priya Nair",
    "Tomás Silva",
    "Hana Sato",
    "Leo Marsh",
    "Amélie Roux",
    "Kofi Mensah",
    "Ines Moreau",
]
FORMATS = ["book", "documentary", "podcast series", "online course", "field guide", "film", "audiobook", "magazine"]

TITLE_TEMPLATES = [
    "The {Adj} {Noun}",
    "{Noun} and {Noun2}",
    "A Field Guide to {Noun}",
    "{Adj} {Noun}: {Noun2} Stories",
    "Notes on {Noun}",
    "{Noun} of the {Adj} {Noun2}",
    "Inside the {Noun}",
    "Everything About {Noun}",
    "{Name}'s {Noun}",
    "The {Noun} Handbook",
    "Beyond the {Noun}",
    "{Adj} Nights: {Noun}",
]
DESCRIPTION_TEMPLATES = [
    "{A_adj} look at {noun} and {noun2}, from {noun3} to the {adj2} {noun4}.",
    "{Name} explores the {noun} in this {format} about {noun2} and {noun3}.",
    "Covers {noun}, {noun2} and the {adj} {noun3}, with plenty of practical examples.",
    "In this {adj} {format}, {Name} follows {a_noun} through a world of {noun2}.",
    "Everything you wanted to know about {noun}: {noun2}, {noun3} and the {adj} {noun4}.",
    "{A_format} for anyone curious about {noun} and {adj2} {noun2}.",
]
FILLER = [
    "A must-have for your collection.",
    "Now in a new edition.",
    "Loved by readers and critics alike.",
    "Short, sharp and surprisingly funny.",
    "Includes a foreword by the author.",
    "",
]

GENDERS = (["F", "M"], [0.49, 0.51])
AGE_GROUPS = (["18-24", "25-34", "35-44", "45-54", "55+"], [0.2, 0.32, 0.22, 0.15, 0.11])
COUNTRIES = (
    ["US", "GB", "DE", "FR", "IN", "BR", "JP", "ES", "CA", "PL"],
    [0.3, 0.12, 0.1, 0.08, 0.12, 0.08, 0.06, 0.05, 0.05, 0.04],
)


def make_users(n_users: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            C.USER_ID: [f"u{u + 1:04d}" for u in range(n_users)],
            "gender": rng.choice(GENDERS[0], size=n_users, p=GENDERS[1]),
            "age_group": rng.choice(AGE_GROUPS[0], size=n_users, p=AGE_GROUPS[1]),
            "country": rng.choice(COUNTRIES[0], size=n_users, p=COUNTRIES[1]),
        }
    )


PART_WORDS = {"book": "Book", "podcast series": "Season", "online course": "Module", "magazine": "Issue"}
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth"]


@dataclass(frozen=True)
class Series:
    """What every part of one series shares: its name, author and format."""

    title: str
    name: str
    format: str


def series_of(vocab: dict[str, list[str]], focus: list[str], rng: np.random.Generator) -> Series:
    """A new series of a neighbourhood: named from its focus nouns, one author, one format."""
    slots = text_slots(vocab, focus, str(rng.choice(NAMES)), str(rng.choice(FORMATS)), rng)
    return Series(str(rng.choice(TITLE_TEMPLATES)).format(**slots), slots["Name"], slots["format"])


def item_text(
    vocab: dict[str, list[str]],
    focus: list[str],
    rng: np.random.Generator,
    series: Series | None = None,
    part: int = 0,
) -> tuple[str, str]:
    """A title and a 1-3 sentence description drawn from one topic's vocabulary.

    `focus`: the item's neighbourhood's nouns, used first. A part of a `series` is titled by the
    series and its part number, and its description says which part of the series it is.
    """
    name = series.name if series else str(rng.choice(NAMES))
    fmt = series.format if series else str(rng.choice(FORMATS))
    slots = text_slots(vocab, focus, name, fmt, rng)
    if series is None:
        title = str(rng.choice(TITLE_TEMPLATES)).format(**slots)
    else:
        title = f"{series.title}, {PART_WORDS.get(fmt, 'Part')} {part}"
    n_sentences = int(rng.integers(1, 3))
    templates = rng.choice(DESCRIPTION_TEMPLATES, size=n_sentences, replace=False)
    sentences = [str(t).format(**slots) for t in templates] + [str(rng.choice(FILLER))]
    if series is not None:
        ordinal = ORDINALS[part - 1] if part <= len(ORDINALS) else f"{part}th"
        sentences.insert(0, f"The {ordinal} {fmt} of the {series.title} series.")
    description = " ".join(s[0].upper() + s[1:] for s in sentences if s)
    return title, description


def text_slots(
    vocab: dict[str, list[str]], focus: list[str], name: str, fmt: str, rng: np.random.Generator
) -> dict[str, str]:
    """The template slots: the focus nouns, then other nouns and adjectives of the topic."""
    others = [n for n in vocab["nouns"] if n not in focus]
    nouns = list(focus) + rng.choice(others, size=4 - len(focus), replace=False).tolist()
    adjectives = rng.choice(vocab["adjectives"], size=2, replace=False).tolist()
    slots = {
        "noun": nouns[0],
        "noun2": nouns[1],
        "noun3": nouns[2],
        "noun4": nouns[3],
        "adj": adjectives[0],
        "adj2": adjectives[1],
        "Noun": title_case(nouns[0]),
        "Noun2": title_case(nouns[1]),
        "Adj": title_case(adjectives[0]),
        "Name": name,
        "format": fmt,
    }
    slots.update(
        A_adj=with_article(slots["adj"]).capitalize(),
        a_noun=with_article(slots["noun"]),
        A_format=with_article(slots["format"]).capitalize(),
    )
    return slots


def with_article(word: str) -> str:
    return f"{'an' if word[0].lower() in 'aeiou' else 'a'} {word}"


def title_case(words: str) -> str:
    return " ".join(w if w.isupper() else w[0].upper() + w[1:] for w in words.split(" "))


def messy(text: str, rng: np.random.Generator, share: float) -> str:
    """Harmless mess real catalogues hold (markup, entities, odd spacing, NFD accents): clean fixes it."""
    if rng.random() >= share:
        return text
    kind = int(rng.integers(0, 4))
    if kind == 0:
        return f"<p>{text.replace('. ', '.</p><p>', 1)}</p>"
    if kind == 1:
        return text.replace(" and ", " &amp; ", 1).replace(". ", ".  \n ", 1)
    if kind == 2:
        return unicodedata.normalize("NFD", text) + " <b>New!</b>"
    return "  " + text.replace(" ", "\t", 2) + "  "
