"""Text-only general questions with correct answers (arithmetic, counting letters, calendar order, capitals and
a few plain facts), mixed into the synthetic instruction data so the LLM keeps its text skills.

Answers are computed where possible; the fixed facts are ones with a single, settled answer.
"""

from __future__ import annotations

import random
from collections.abc import Callable

DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
WORDS = (
    "apple",
    "river",
    "garden",
    "window",
    "planet",
    "yellow",
    "music",
    "bridge",
    "orange",
    "pencil",
    "mountain",
    "kitchen",
    "library",
    "computer",
    "elephant",
    "forest",
    "island",
    "rabbit",
    "summer",
    "teacher",
)
POLYGONS = (("triangle", 3), ("square", 4), ("pentagon", 5), ("hexagon", 6), ("octagon", 8))
OPPOSITES = (
    ("hot", "cold"),
    ("up", "down"),
    ("wet", "dry"),
    ("full", "empty"),
    ("early", "late"),
    ("north", "south"),
    ("east", "west"),
    ("inside", "outside"),
    ("push", "pull"),
    ("day", "night"),
)
CAPITALS = (
    ("France", "Paris"),
    ("Japan", "Tokyo"),
    ("Italy", "Rome"),
    ("Germany", "Berlin"),
    ("Spain", "Madrid"),
    ("Canada", "Ottawa"),
    ("Australia", "Canberra"),
    ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Russia", "Moscow"),
    ("the United Kingdom", "London"),
    ("Norway", "Oslo"),
    ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"),
    ("Poland", "Warsaw"),
    ("Greece", "Athens"),
    ("Portugal", "Lisbon"),
    ("Ireland", "Dublin"),
    ("Mexico", "Mexico City"),
    ("Peru", "Lima"),
    ("South Korea", "Seoul"),
    ("Thailand", "Bangkok"),
    ("Vietnam", "Hanoi"),
    ("Turkey", "Ankara"),
    ("Austria", "Vienna"),
    ("Belgium", "Brussels"),
    ("Denmark", "Copenhagen"),
    ("Hungary", "Budapest"),
    ("Cuba", "Havana"),
    ("Nigeria", "Abuja"),
    ("Morocco", "Rabat"),
    ("New Zealand", "Wellington"),
    ("the Philippines", "Manila"),
)
FACTS = (
    ("How many days are in a week?", "There are 7 days in a week."),
    ("How many months are in a year?", "There are 12 months in a year."),
    ("How many hours are in a day?", "There are 24 hours in a day."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
    ("How many centimeters are in a meter?", "There are 100 centimeters in a meter."),
    ("How many grams are in a kilogram?", "There are 1000 grams in a kilogram."),
    ("How many meters are in a kilometer?", "There are 1000 meters in a kilometer."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("How many legs does an insect have?", "An insect has 6 legs."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    (
        "At how many degrees Celsius does water boil at sea level?",
        "At sea level, water boils at 100 degrees Celsius.",
    ),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("What is the chemical formula of water?", "The chemical formula of water is H2O."),
    (
        "What gas do plants take in from the air for photosynthesis?",
        "Plants take in carbon dioxide for photosynthesis.",
    ),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("Which ocean is the largest?", "The Pacific Ocean is the largest ocean."),
    (
        "What is the highest mountain above sea level?",
        "Mount Everest is the highest mountain above sea level.",
    ),
    ("What color do you get by mixing blue and yellow paint?", "Mixing blue and yellow paint gives green."),
    ("What do bees make from nectar?", "Bees make honey from nectar."),
)

QA = tuple[str, str]


def _addition(rng: random.Random) -> QA:
    a, b = rng.randint(1, 99), rng.randint(1, 99)
    return f"What is {a} + {b}?", f"{a} + {b} = {a + b}."


def _subtraction(rng: random.Random) -> QA:
    a, b = sorted((rng.randint(1, 99), rng.randint(1, 99)), reverse=True)
    return f"What is {a} - {b}?", f"{a} - {b} = {a - b}."


def _multiplication(rng: random.Random) -> QA:
    a, b = rng.randint(2, 12), rng.randint(2, 12)
    return f"What is {a} times {b}?", f"{a} times {b} is {a * b}."


def _square_root(rng: random.Random) -> QA:
    n = rng.randint(2, 15)
    return f"What is the square root of {n * n}?", f"The square root of {n * n} is {n}."


def _larger(rng: random.Random) -> QA:
    a, b = rng.sample(range(1, 1000), 2)
    return f"Which number is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}."


def _parity(rng: random.Random) -> QA:
    n = rng.randint(1, 200)
    return f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."


def _letters(rng: random.Random) -> QA:
    word = rng.choice(WORDS)
    return f'How many letters are in the word "{word}"?', f'The word "{word}" has {len(word)} letters.'


def _next_day(rng: random.Random) -> QA:
    i = rng.randrange(len(DAYS))
    return f"What day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % len(DAYS)]} comes after {DAYS[i]}."


def _next_month(rng: random.Random) -> QA:
    i = rng.randrange(len(MONTHS))
    return (
        f"Which month comes after {MONTHS[i]}?",
        f"{MONTHS[(i + 1) % len(MONTHS)]} comes after {MONTHS[i]}.",
    )


def _next_letter(rng: random.Random) -> QA:
    i = rng.randrange(25)
    a, b = chr(ord("A") + i), chr(ord("A") + i + 1)
    return f"Which letter comes after {a} in the alphabet?", f"{b} comes after {a} in the English alphabet."


def _polygon(rng: random.Random) -> QA:
    name, sides = rng.choice(POLYGONS)
    return f"How many sides does a {name} have?", f"A {name} has {sides} sides."


def _opposite(rng: random.Random) -> QA:
    pair = rng.choice(OPPOSITES)
    word, other = pair if rng.random() < 0.5 else pair[::-1]
    return f'What is the opposite of "{word}"?', f'The opposite of "{word}" is "{other}".'


def _capital(rng: random.Random) -> QA:
    country, capital = rng.choice(CAPITALS)
    return f"What is the capital of {country}?", f"The capital of {country} is {capital}."


def _fact(rng: random.Random) -> QA:
    return rng.choice(FACTS)


GENERATORS: tuple[Callable[[random.Random], QA], ...] = (
    _addition,
    _subtraction,
    _multiplication,
    _square_root,
    _larger,
    _parity,
    _letters,
    _next_day,
    _next_month,
    _next_letter,
    _polygon,
    _opposite,
    _capital,
    _capital,
    _fact,
    _fact,
)


def general_conversation(rng: random.Random, max_turns: int = 3) -> list[QA]:
    """1 to `max_turns` distinct (question, answer) pairs."""
    turns: list[QA] = []
    for _ in range(rng.randint(1, max_turns)):
        qa = rng.choice(GENERATORS)(rng)
        if all(qa[0] != q for q, _ in turns):
            turns.append(qa)
    return turns
