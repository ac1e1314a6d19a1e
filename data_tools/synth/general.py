"""Text-only general questions with correct answers (arithmetic, counting letters, calendar order, capitals, a
few plain facts, and real-world questions worded like the image questions), mixed into the synthetic instruction
data so the LLM keeps its text skills.

Answers are computed where possible; the fixed facts are ones with a single, settled answer. None of them asks
what the text-skills check (train/text_skills.json) asks, or answers with its answer words: that check measures
what the model kept, not what it was taught here (tests/test_data_synth.py holds it to that).
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
    ("Italy", "Rome"),
    ("Spain", "Madrid"),
    ("Australia", "Canberra"),
    ("Kenya", "Nairobi"),
    ("Argentina", "Buenos Aires"),
    ("China", "Beijing"),
    ("India", "New Delhi"),
    ("Russia", "Moscow"),
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
    ("How many months are in a year?", "There are 12 months in a year."),
    ("How many minutes are in an hour?", "There are 60 minutes in an hour."),
    ("How many seconds are in a minute?", "There are 60 seconds in a minute."),
    ("How many centimeters are in a meter?", "There are 100 centimeters in a meter."),
    ("How many grams are in a kilogram?", "There are 1000 grams in a kilogram."),
    ("How many meters are in a kilometer?", "There are 1000 meters in a kilometer."),
    ("How many legs does a spider have?", "A spider has 8 legs."),
    ("How many legs does an insect have?", "An insect has 6 legs."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What is the chemical symbol for gold?", "The chemical symbol for gold is Au."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    (
        "What is the highest mountain above sea level?",
        "Mount Everest is the highest mountain above sea level.",
    ),
    ("What do bees make from nectar?", "Bees make honey from nectar."),
)

# Real-world questions in the forms of the image questions ("Where is ...?", "What color is ...?", "How many
# ...?", "What shape is ...?", "Is ... small or large?", "Is there ...?"): without an image they are about the
# world, so the model does not learn that such a question is always answered from the picture.
WORLD = (
    ("Where is the Colosseum?", "The Colosseum is in Rome, Italy."),
    ("Where is the Statue of Liberty?", "The Statue of Liberty is in New York City, in the United States."),
    ("Where is the Great Wall?", "The Great Wall is in northern China."),
    ("Where is the Taj Mahal located?", "The Taj Mahal is in Agra, India."),
    ("Where is Machu Picchu?", "Machu Picchu is in the Andes mountains of Peru."),
    ("Where is the Sydney Opera House?", "The Sydney Opera House is in Sydney, Australia."),
    ("Where is the Acropolis?", "The Acropolis is in Athens, Greece."),
    ("Where is the Leaning Tower of Pisa?", "The Leaning Tower of Pisa is in Pisa, Italy."),
    ("Where is the Kremlin?", "The Kremlin is in Moscow, Russia."),
    ("Where is the Grand Canyon?", "The Grand Canyon is in Arizona, in the United States."),
    ("Where is Mount Kilimanjaro?", "Mount Kilimanjaro is in Tanzania, in East Africa."),
    ("Where is the Golden Gate Bridge?", "The Golden Gate Bridge is in San Francisco, California."),
    ("Where is Angkor Wat?", "Angkor Wat is in Cambodia."),
    ("Where is the Sahara Desert?", "The Sahara Desert is in northern Africa."),
    (
        "In which part of the world is Antarctica?",
        "Antarctica is at the South Pole, in the far south of the world.",
    ),
    ("Where does the Sun rise?", "The Sun rises in the east."),
    ("Where does the Sun set?", "The Sun sets in the west."),
    ("Where is the human heart located?", "The heart is in the chest, slightly to the left of the middle."),
    ("What color is a banana?", "A ripe banana is yellow."),
    ("What color is grass?", "Grass is green."),
    ("What color is snow?", "Snow is white."),
    ("What color is a ripe tomato?", "A ripe tomato is red."),
    ("What color is coal?", "Coal is black."),
    ("What color is a carrot?", "A carrot is orange."),
    ("What color is milk?", "Milk is white."),
    ("What color is a lemon?", "A lemon is yellow."),
    ("What color is a flamingo?", "A flamingo is pink."),
    ("What color is chocolate?", "Chocolate is brown."),
    ("What color is an emerald?", "An emerald is green."),
    ("What is the color of a crow?", "A crow is black."),
    ("What color is an eggplant?", "An eggplant is purple."),
    ("Which color are the leaves of most trees in summer?", "In summer, most tree leaves are green."),
    ("How many legs does a dog have?", "A dog has 4 legs."),
    ("How many wheels does a bicycle have?", "A bicycle has 2 wheels."),
    ("How many wheels does a car have?", "A car has 4 wheels."),
    ("How many fingers are on one hand?", "There are 5 fingers on one hand."),
    ("How many legs does a bird have?", "A bird has 2 legs."),
    ("How many continents are there?", "There are 7 continents."),
    ("How many players are on a soccer team on the field?", "A soccer team has 11 players on the field."),
    ("How many strings does a standard guitar have?", "A standard guitar has 6 strings."),
    ("What shape is a stop sign?", "A stop sign is an octagon."),
    ("What shape is a wheel?", "A wheel is a circle."),
    ("What shape is a slice of pizza?", "A slice of pizza is roughly a triangle."),
    ("What shape is a die used in board games?", "A die is a cube."),
    ("What is the shape of a basketball?", "A basketball is a sphere."),
    ("What shape is a chessboard?", "A chessboard is a square."),
    ("Is an elephant small or large?", "An elephant is large."),
    ("Is an ant small or large?", "An ant is small."),
    ("Is a whale small or large?", "A whale is very large."),
    ("Is a mouse small or large?", "A mouse is small."),
    ("Which is bigger, the Sun or the Moon?", "The Sun is much bigger than the Moon."),
    ("Is there a moon around the Earth?", "Yes, the Earth has one moon."),
    ("Are there penguins at the North Pole?", "No, wild penguins live in the Southern Hemisphere."),
    ("Is there air on the Moon?", "No, the Moon has almost no air."),
    ("Are there polar bears in Antarctica?", "No, polar bears live in the Arctic."),
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


def _world(rng: random.Random) -> QA:
    return rng.choice(WORLD)


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
    _world,
    _world,
    _world,
    _world,
)


def general_conversation(rng: random.Random, max_turns: int = 3) -> list[QA]:
    """1 to `max_turns` distinct (question, answer) pairs."""
    turns: list[QA] = []
    for _ in range(rng.randint(1, max_turns)):
        qa = rng.choice(GENERATORS)(rng)
        if all(qa[0] != q for q, _ in turns):
            turns.append(qa)
    return turns
