"""Questions about a shapes scene and their gold answers: every phrasing template in one place, in two
disjoint sets (`train` for training data, `heldout` for a paraphrase evaluation), and generators that only
ask what the scene answers unambiguously (a colour question only about a shape present once, and so on).

Each question has a short answer (a word, a position or a digit) and a full-sentence answer.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

from data_tools.synth.world import COLORS, SHAPES, Scene, SceneObject

QUESTION_TYPES = ("color", "shape", "count", "exist", "position", "size")
PHRASINGS = ("train", "heldout")

# Template slots: {shape}, {shapes} (plural), {color}. Keep the two phrasings free of shared wording.
TEMPLATES: dict[str, dict[str, tuple[str, ...]]] = {
    "train": {
        "color": (
            "What color is the {shape}?",
            "What is the color of the {shape}?",
            "Which color does the {shape} have?",
        ),
        "shape": (
            "What shape is the {color} object?",
            "What is the shape of the {color} object?",
            "Which shape is {color}?",
        ),
        "count_shape": (
            "How many {shapes} are there?",
            "How many {shapes} are in the image?",
            "Count the {shapes} in the image.",
        ),
        "count_color": (
            "How many {color} objects are there?",
            "How many {color} shapes are in the image?",
            "Count the {color} objects.",
        ),
        "count_all": (
            "How many objects are there?",
            "How many shapes are in the image?",
            "Count the objects in the image.",
        ),
        "exist": (
            "Is there a {color} {shape}?",
            "Is there a {color} {shape} in the image?",
            "Does the image contain a {color} {shape}?",
        ),
        "position": (
            "Where is the {color} {shape}?",
            "Where is the {color} {shape} located?",
            "In which part of the image is the {color} {shape}?",
        ),
        "size": (
            "Is the {color} {shape} small or large?",
            "Is the {color} {shape} large or small?",
            "What size is the {color} {shape}?",
        ),
    },
    "heldout": {
        "color": ("Tell me the hue of the {shape}.", "Name the hue that fills the {shape}."),
        "shape": ("Name the form of the {color} item.", "Say which geometric form the {color} item has."),
        "count_shape": ("What number of {shapes} can you see?", "Give a tally of every {shape} shown."),
        "count_color": (
            "What number of {color} items can you see?",
            "Give a tally of every {color} item shown.",
        ),
        "count_all": ("What number of items can you see?", "Give a tally of every item shown."),
        "exist": (
            "Can you spot any {color} {shape} here?",
            "Does this picture include some {color} {shape}?",
        ),
        "position": (
            "Which region of the picture holds the {color} {shape}?",
            "Point out the area where you find the {color} {shape}.",
        ),
        "size": (
            "Of the two sizes, small and large, which fits the {color} {shape}?",
            "Judge the scale of the {color} {shape}: small one or large one?",
        ),
    },
}

DESCRIBE_PROMPTS = (
    "Describe the image.",
    "Describe the image in detail.",
    "What do you see in this picture?",
    "Give a detailed description of the image.",
    "Describe everything in this picture.",
)
_POSITION_PHRASES = {
    "top left": "at the top left",
    "top": "at the top",
    "top right": "at the top right",
    "left": "on the left",
    "center": "in the center",
    "right": "on the right",
    "bottom left": "at the bottom left",
    "bottom": "at the bottom",
    "bottom right": "at the bottom right",
}


@dataclass(frozen=True)
class Question:
    """A question about one scene (without the short-answer suffix) and its gold answers."""

    type: str
    text: str
    short: str
    sentence: str


def plural(shape: str) -> str:
    return shape + "s"


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def where_phrase(position: str) -> str:
    """'at the top left', 'in the center', 'on the right', ..."""
    return _POSITION_PHRASES[position]


def describe_object(obj: SceneObject, with_color: bool = True) -> str:
    """'a small red star at the top left' ('a small star at the top left' without the colour)."""
    color = f" {obj.color}" if with_color else ""
    return f"{article(obj.size)} {obj.size}{color} {obj.shape} {where_phrase(obj.position)}"


def _join(items: Sequence[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption(scene: Scene, uncolored: frozenset[int] = frozenset()) -> str:
    """One sentence naming every object (size, colour, shape and position) and the background; the objects
    whose index is in `uncolored` go without their colour (stage clip's repainted objects)."""
    text = _join([describe_object(o, k not in uncolored) for k, o in enumerate(scene.objects)])
    return f"{text[0].upper()}{text[1:]}, on a {scene.background} background."


def count_summary(scene: Scene) -> str:
    """The scene's counts as a sentence: the total, then each colour and each shape present with its count, in
    a fixed order ('4 objects; red: 2, blue: 1, green: 1; circle: 2, star: 1, square: 1.'); the opening of a
    counted caption (`mllm data synth --align-counts`), read in the order a count question is: kind, then number."""
    n = len(scene.objects)
    colors = Counter(o.color for o in scene.objects)
    shapes = Counter(o.shape for o in scene.objects)
    by_color = ", ".join(f"{c}: {colors[c]}" for c in COLORS if colors[c])
    by_shape = ", ".join(f"{s}: {shapes[s]}" for s in SHAPES if shapes[s])
    return f"{n} object{'s' if n != 1 else ''}; {by_color}; {by_shape}."


def description(scene: Scene) -> str:
    """The detailed answer to 'Describe the image.'."""
    n = len(scene.objects)
    head = f"The image shows {n} object{'s' if n != 1 else ''} on a {scene.background} background: "
    parts = [head + _join([describe_object(o) for o in scene.objects]) + "."]
    shapes = Counter(o.shape for o in scene.objects)
    repeated = [f"{count} {plural(shape)}" for shape, count in shapes.items() if count > 1]
    if repeated:
        parts.append(f"There are {_join(repeated)}.")
    return " ".join(parts)


def _unique(scene: Scene, key: str) -> list[SceneObject]:
    values = Counter(getattr(o, key) for o in scene.objects)
    return [o for o in scene.objects if values[getattr(o, key)] == 1]


def _unique_pairs(scene: Scene) -> list[SceneObject]:
    pairs = Counter((o.color, o.shape) for o in scene.objects)
    return [o for o in scene.objects if pairs[(o.color, o.shape)] == 1]


def _pick(rng: random.Random, candidates: list[SceneObject], focus: Sequence[tuple[str, str]]) -> SceneObject:
    """A random candidate, preferring those whose (colour, shape) is in `focus`."""
    focused = [o for o in candidates if (o.color, o.shape) in focus]
    return rng.choice(focused or candidates)


def _template(rng: random.Random, phrasing: str, key: str) -> str:
    """One template; a single `rng.random()` call whatever the phrasing, so that both phrasings of a seed ask
    the same questions in different words."""
    templates = TEMPLATES[phrasing][key]
    return templates[int(rng.random() * len(templates))]


def available_types(scene: Scene) -> list[str]:
    """Question types this scene can answer without ambiguity."""
    types = ["count", "exist"]
    if _unique(scene, "shape"):
        types.append("color")
    if _unique(scene, "color"):
        types.append("shape")
    if _unique_pairs(scene):
        types += ["position", "size"]
    return [t for t in QUESTION_TYPES if t in types]


def make_question(
    qtype: str,
    scene: Scene,
    rng: random.Random,
    phrasing: str = "train",
    exist_pairs: Sequence[tuple[str, str]] = (),
    focus: Sequence[tuple[str, str]] = (),
    count_repeated: float = 0.0,
) -> Question:
    """A question of `qtype` (one of `available_types(scene)`). Exist questions pick their absent pair from
    `exist_pairs`; targets in `focus` (colour, shape) are preferred when the scene has them. A count question of
    one colour or shape asks, with probability `count_repeated`, about one the scene holds more than once (when
    it holds one); otherwise about any colour or shape, so that most such answers are 0 or 1."""
    if phrasing not in TEMPLATES:
        raise ValueError(f"unknown phrasing {phrasing!r}; valid: {', '.join(PHRASINGS)}")
    objs = scene.objects
    if qtype == "color":
        obj = _pick(rng, _unique(scene, "shape"), focus)
        text = _template(rng, phrasing, "color").format(shape=obj.shape)
        return Question(qtype, text, obj.color, f"The {obj.shape} is {obj.color}.")
    if qtype == "shape":
        obj = _pick(rng, _unique(scene, "color"), focus)
        text = _template(rng, phrasing, "shape").format(color=obj.color)
        return Question(
            qtype, text, obj.shape, f"The {obj.color} object is {article(obj.shape)} {obj.shape}."
        )
    if qtype in ("position", "size"):
        obj = _pick(rng, _unique_pairs(scene), focus)
        text = _template(rng, phrasing, qtype).format(color=obj.color, shape=obj.shape)
        if qtype == "position":
            return Question(
                qtype, text, obj.position, f"The {obj.color} {obj.shape} is {where_phrase(obj.position)}."
            )
        return Question(qtype, text, obj.size, f"The {obj.color} {obj.shape} is {obj.size}.")
    if qtype == "count":
        return _count_question(scene, rng, phrasing, count_repeated)
    if qtype == "exist":
        present = sorted({(o.color, o.shape) for o in objs})
        absent = [p for p in exist_pairs if p not in present]
        if rng.random() < 0.5 or not absent:
            focused = [p for p in present if p in focus]
            color, shape, answer = *rng.choice(focused or present), "yes"
        else:
            focused = [p for p in absent if p in focus]
            color, shape, answer = *rng.choice(focused or absent), "no"
        text = _template(rng, phrasing, "exist").format(color=color, shape=shape)
        thing = f"{article(color)} {color} {shape}"
        sentence = f"Yes, there is {thing}." if answer == "yes" else f"No, there is no {color} {shape}."
        return Question(qtype, text, answer, sentence)
    raise ValueError(f"unknown question type {qtype!r}; valid: {', '.join(QUESTION_TYPES)}")


def _repeated(scene: Scene, key: str) -> list[str]:
    """The values of `key` ("color" or "shape") that more than one object of the scene has, sorted."""
    values = Counter(getattr(o, key) for o in scene.objects)
    return sorted(v for v, n in values.items() if n > 1)


def _count_target(scene: Scene, rng: random.Random, key: str, choices: Sequence[str], repeated: float) -> str:
    """What a count question of one colour or shape asks about (see make_question's `count_repeated`); no
    extra random draw when `repeated` is 0, so such data stays what it was."""
    if repeated > 0 and rng.random() < repeated and (several := _repeated(scene, key)):
        return rng.choice(several)
    return rng.choice(tuple(choices))


def _count_question(scene: Scene, rng: random.Random, phrasing: str, repeated: float = 0.0) -> Question:
    kind = rng.choice(("count_shape", "count_color", "count_all"))
    template = _template(rng, phrasing, kind)
    if kind == "count_shape":
        shape = _count_target(scene, rng, "shape", SHAPES, repeated)
        n = sum(o.shape == shape for o in scene.objects)
        text = template.format(shape=shape, shapes=plural(shape))
        noun = shape if n == 1 else plural(shape)
    elif kind == "count_color":
        color = _count_target(scene, rng, "color", tuple(COLORS), repeated)
        n = sum(o.color == color for o in scene.objects)
        text = template.format(color=color)
        noun = f"{color} object" + ("" if n == 1 else "s")
    else:
        n = len(scene.objects)
        text = template
        noun = "object" if n == 1 else "objects"
    if n == 0:
        sentence = f"There are no {noun}."
    else:
        sentence = f"There {'is' if n == 1 else 'are'} {n} {noun}."
    return Question("count", text, str(n), sentence)
