"""Tests of the shapes world (`mllm data synth`): determinism, exact pixels, gold answers recomputed from
scenes.jsonl by an independent parser, held-out pairs of the compositional split, disjoint train / test
images, balanced exist answers, disjoint held-out phrasings, and the records passing validation."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from data_tools.synth import general
from data_tools.synth import questions as questions_module
from data_tools.synth.world import COLORS, HELD_OUT_PAIRS, SHAPES
from data_tools.synth.writer import SynthConfig, synthesize
from data_tools.validate import validate_file
from mllm.errors import MllmError

SUFFIX = "Answer the question using a single word or number."
GRID = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)


def _synth(out: Path, n: int, seed: int, **kwargs: Any) -> Path:
    synthesize(SynthConfig(out=out, num_images=n, seed=seed, progress=False, **kwargs))
    return out


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _pixel_hashes(folder: Path) -> set[str]:
    return {
        hashlib.sha256(Image.open(p).tobytes()).hexdigest() for p in sorted((folder / "images").glob("*.png"))
    }


@pytest.fixture(scope="module")
def train(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _synth(tmp_path_factory.mktemp("train"), 150, seed=3)


@pytest.fixture(scope="module")
def scenes(train: Path) -> dict[str, dict[str, Any]]:
    return {s["image"]: s for s in _jsonl(train / "scenes.jsonl")}


# --- an independent reading of questions: which colour / shape words they mention ---------------------------


def _mentions(text: str) -> tuple[list[str], list[str], bool]:
    """(colours, shapes, plural shape?) named in a question, read word by word."""
    words = re.findall(r"[a-z]+", text.lower())
    colors = [w for w in words if w in COLORS]
    shapes = [w for w in words if w in SHAPES] + [
        w[:-1] for w in words if w[:-1] in SHAPES and w.endswith("s")
    ]
    return colors, shapes, any(w.endswith("s") and w[:-1] in SHAPES for w in words)


def _cell(center: list[int], size: int) -> str:
    return GRID[center[1] * 3 // size][center[0] * 3 // size]


def _expected(qtype: str, text: str, scene: dict[str, Any]) -> str:
    """The gold answer recomputed from the scene alone; asserts the question is unambiguous."""
    objects = scene["objects"]
    colors, shapes, _ = _mentions(text.replace(SUFFIX, ""))
    if qtype == "count":
        if shapes:
            return str(sum(o["shape"] == shapes[0] for o in objects))
        if colors:
            return str(sum(o["color"] == colors[0] for o in objects))
        return str(len(objects))
    if qtype == "exist":
        return "yes" if any(o["color"] == colors[0] and o["shape"] == shapes[0] for o in objects) else "no"
    if qtype == "color":
        matches = [o for o in objects if o["shape"] == shapes[0]]
        assert len(matches) == 1 and not colors, text
        return matches[0]["color"]
    if qtype == "shape":
        matches = [o for o in objects if o["color"] == colors[0]]
        assert len(matches) == 1 and not shapes, text
        return matches[0]["shape"]
    matches = [o for o in objects if o["color"] == colors[0] and o["shape"] == shapes[0]]
    assert len(matches) == 1, text
    if qtype == "position":
        return _cell(matches[0]["center"], scene["image_size"])
    assert qtype == "size"
    return "small" if matches[0]["radius"] < 0.12 * scene["image_size"] else "large"


def _asks_for_description(question: str) -> bool:
    """Whether a training instruction asks for a detailed description (by its wording, not the generator's)."""
    return question.startswith(("Describe", "What do you see", "Give a detailed"))


def _question_type(text: str) -> str:
    """Guess the type of a training-phrased question from its wording (independent of the generator)."""
    lowered = text.lower()
    if "how many" in lowered or lowered.startswith("count"):
        return "count"
    if lowered.startswith(("is there", "does the image contain")):
        return "exist"
    if "where" in lowered or "which part" in lowered:
        return "position"
    if "small" in lowered or "size" in lowered:
        return "size"
    if "color" in lowered:
        return "color"
    assert "shape" in lowered, text
    return "shape"


# --- tests -------------------------------------------------------------------------------------------------


def test_same_seed_same_bytes_other_seed_other_images(train: Path, tmp_path: Path) -> None:
    again = _synth(tmp_path / "again", 150, seed=3)
    for path in sorted(p for p in train.rglob("*") if p.is_file()):
        assert path.read_bytes() == (again / path.relative_to(train)).read_bytes(), path
    other = _synth(tmp_path / "other", 20, seed=4)
    assert not _pixel_hashes(other) & _pixel_hashes(train)


def test_prefix_of_a_larger_run_is_identical(train: Path, tmp_path: Path) -> None:
    small = _synth(tmp_path / "small", 10, seed=3)
    assert _jsonl(small / "scenes.jsonl") == _jsonl(train / "scenes.jsonl")[:10]


@pytest.mark.parametrize("image_size", [64, 128, 200])
def test_world_geometry_and_exact_center_colours(tmp_path: Path, image_size: int) -> None:
    out = _synth(tmp_path / "w", 80, seed=11, image_size=image_size)
    backgrounds = {"white": (255, 255, 255), "light gray": (200, 200, 200), "dark gray": (70, 70, 70)}
    for scene in _jsonl(out / "scenes.jsonl"):
        image = Image.open(out / "images" / scene["image"]).convert("RGB")
        assert image.size == (image_size, image_size)
        assert 1 <= len(scene["objects"]) <= 6 and scene["background"] in backgrounds
        allowed = {backgrounds[scene["background"]], *COLORS.values()}
        assert set(image.getdata()) <= allowed  # plain colours only, no anti-aliasing
        boxes = []
        for obj in scene["objects"]:
            cx, cy = obj["center"]
            assert image.getpixel((cx, cy)) == COLORS[obj["color"]], (scene["image"], obj)
            assert obj["position"] == _cell(obj["center"], image_size)
            r = obj["radius"]
            assert r <= cx < image_size - r and r <= cy < image_size - r
            fraction = r / image_size
            assert (0.06 < fraction < 0.10) if obj["size"] == "small" else (0.13 < fraction < 0.19)
            x0, y0, x1, y1 = obj["bbox"]
            assert x0 <= cx <= x1 and y0 <= cy <= y1
            boxes.append((cx - r, cy - r, cx + r, cy + r))
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                assert a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1], (scene["image"], a, b)


def test_vqa_gold_answers_agree_with_scenes(train: Path, scenes: dict[str, dict[str, Any]]) -> None:
    questions = _jsonl(train / "vqa_questions.jsonl")
    answers = {a["question_id"]: a for a in _jsonl(train / "vqa_answers.jsonl")}
    assert len(questions) == len(answers) == 300
    types = Counter()
    for q in questions:
        assert q["text"].endswith("\n" + SUFFIX)
        gold = answers[q["question_id"]]
        types[gold["type"]] += 1
        assert _question_type(q["text"]) == gold["type"], q["text"]
        assert gold["answer"] == _expected(gold["type"], q["text"], scenes[q["image"]]), q
    assert set(types) == {"color", "shape", "count", "exist", "position", "size"}
    assert min(types.values()) > 20


def test_instruct_answers_agree_with_scenes(train: Path, scenes: dict[str, dict[str, Any]]) -> None:
    records = json.loads((train / "instruct.json").read_text())
    checked_short = checked_sentences = 0
    for record in records:
        if "image" not in record:
            continue
        turns = record["conversations"]
        assert 2 <= len(turns) <= 10 and turns[0]["value"].count("<image>") == 1
        scene = scenes[record["image"]]
        for human, gpt in zip(turns[::2], turns[1::2]):
            question = human["value"].replace("<image>", "").strip()
            if _asks_for_description(question):
                for obj in scene["objects"]:
                    assert f"{obj['size']} {obj['color']} {obj['shape']}" in gpt["value"]
                continue
            qtype = _question_type(question)
            expected = _expected(qtype, question, scene)
            if question.endswith(SUFFIX):
                assert gpt["value"] == expected, (question, gpt["value"])
                checked_short += 1
            else:
                sentence = gpt["value"].lower()
                if qtype == "exist":
                    assert sentence.startswith(expected)
                elif qtype == "count" and expected == "0":
                    assert " no " in sentence
                else:
                    assert re.search(rf"\b{expected}\b", sentence), (question, sentence)
                checked_sentences += 1
    assert checked_short > 100 and checked_sentences > 100


def test_text_only_records_are_about_ten_percent_and_correct(train: Path) -> None:
    records = json.loads((train / "instruct.json").read_text())
    text_only = [r for r in records if "image" not in r]
    assert abs(len(text_only) / len(records) - 0.10) < 0.02
    arithmetic = 0
    for record in text_only:
        assert all("<image>" not in t["value"] for t in record["conversations"])
        for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2]):
            if m := re.fullmatch(r"What is (\d+) ([+-]) (\d+)\?", human["value"]):
                a, op, b = int(m[1]), m[2], int(m[3])
                assert gpt["value"] == f"{a} {op} {b} = {a + b if op == '+' else a - b}."
                arithmetic += 1
            if m := re.fullmatch(r"What is (\d+) times (\d+)\?", human["value"]):
                assert gpt["value"].endswith(f" is {int(m[1]) * int(m[2])}.")
    assert arithmetic > 0


NUMBER_WORDS = {"four", "seven", "twenty-four"}


@pytest.mark.parametrize(
    ("check_file", "known_words"),
    [
        ("text_skills.json", {"paris", "shakespeare", "egypt", "nile"}),
        ("text_skills_heldout.json", {"cairo", "louvre", "einstein", "austen"}),
    ],
)
def test_text_chats_do_not_teach_the_text_skills_check(check_file: str, known_words: set[str]) -> None:
    """No fixed question of the text-only chats is a question of the text-skills checks in train/, and none names
    one of their non-numeric answer words: the checks must measure what the model kept, not what it was taught."""
    check = json.loads((Path(__file__).parents[1] / "train" / check_file).read_text())
    asked = {q["question"].lower() for q in check["questions"]}
    words = {
        w.lower()
        for q in check["questions"]
        for w in q["accept"]
        if not any(c.isdigit() for c in w) and w.lower() not in NUMBER_WORDS
    }
    assert known_words <= words
    tables = {"FACTS": general.FACTS, "WORLD": general.WORLD}
    tables["CAPITALS"] = tuple(
        (f"What is the capital of {c}?", f"{c} {city}") for c, city in general.CAPITALS
    )
    tables["OPPOSITES"] = tuple((f"opposite of {a}", f"{a} {b}") for a, b in general.OPPOSITES)
    leaks = [
        (name, question, word)
        for name, table in tables.items()
        for question, answer in table
        for word in words
        if re.search(rf"\b{re.escape(word)}\b", f"{question} {answer}", re.IGNORECASE)
    ]
    assert not leaks
    assert not asked & {q.lower() for table in tables.values() for q, _ in table}


def test_outputs_validate_and_have_the_documented_shape(train: Path) -> None:
    for name in ("align.json", "instruct.json"):
        report = validate_file(train / name, train / "images")
        assert report.ok and not report.fixes, report.errors[:3]
    align = json.loads((train / "align.json").read_text())
    assert len(align) == 150 and all(len(r["conversations"]) == 2 for r in align)
    for pair, scene in zip(_jsonl(train / "pairs.jsonl"), _jsonl(train / "scenes.jsonl")):
        assert pair["image"] == scene["image"]
        for obj in scene["objects"]:
            assert f"{obj['size']} {obj['color']} {obj['shape']}" in pair["caption"]
        assert scene["background"] in pair["caption"]
    meta = json.loads((train / "synth.json").read_text())
    assert meta["split"] == "train" and meta["seed"] == 3 and len(meta["held_out_pairs"]) == 5


def test_align_captions_name_every_object_with_its_position(train: Path) -> None:
    """Stage-1 captions say where each object is, so the projector learns to hand position to the LLM."""
    scenes = {s["image"]: s for s in _jsonl(train / "scenes.jsonl")}
    for record in json.loads((train / "align.json").read_text()):
        scene = scenes[record["image"]]
        text = record["conversations"][1]["value"]
        for obj in scene["objects"]:
            thing = f"{obj['size']} {obj['color']} {obj['shape']}"
            assert re.search(rf"{thing} (at|on|in) the {obj['position']}(,| and | on a )", text), (
                thing,
                text,
            )
        assert text.endswith(f"on a {scene['background']} background.")


def test_exist_answers_are_about_half_no(train: Path) -> None:
    answers = [a["answer"] for a in _jsonl(train / "vqa_answers.jsonl") if a["type"] == "exist"]
    records = json.loads((train / "instruct.json").read_text())
    for record in records:
        for human, gpt in zip(record["conversations"][::2], record["conversations"][1::2]):
            question = human["value"].replace("<image>", "").strip()
            if record.get("image") and question.endswith(SUFFIX) and _question_type(question) == "exist":
                answers.append(gpt["value"])
    assert len(answers) > 60
    assert 0.4 <= answers.count("no") / len(answers) <= 0.6


def test_compositional_split_holds_out_exactly_its_pairs(train: Path, tmp_path: Path) -> None:
    assert len(set(HELD_OUT_PAIRS)) == 5
    held_out = set(HELD_OUT_PAIRS)
    test = _synth(tmp_path / "test", 60, seed=3, split="test")
    comp = _synth(tmp_path / "comp", 60, seed=3, split="compositional")
    train_pairs = {(o["color"], o["shape"]) for s in _jsonl(train / "scenes.jsonl") for o in s["objects"]}
    all_pairs = {(c, s) for c in COLORS for s in SHAPES}
    assert train_pairs == all_pairs - held_out  # every other pair does occur
    assert (
        not {(o["color"], o["shape"]) for s in _jsonl(test / "scenes.jsonl") for o in s["objects"]} & held_out
    )
    for scene in _jsonl(comp / "scenes.jsonl"):
        assert {(o["color"], o["shape"]) for o in scene["objects"]} & held_out, scene["image"]
    for name in ("instruct.json", "align.json"):  # training text never names a held-out pair either
        text = (train / name).read_text()
        assert not any(f"{c} {s}" in text for c, s in held_out)


def test_train_and_test_share_no_image(train: Path, tmp_path: Path) -> None:
    test = _synth(tmp_path / "test", 150, seed=3, split="test")
    assert not _pixel_hashes(test) & _pixel_hashes(train)
    canon = [
        json.dumps([*sorted(map(json.dumps, s["objects"])), s["background"]])
        for s in _jsonl(train / "scenes.jsonl") + _jsonl(test / "scenes.jsonl")
    ]
    assert len(set(canon)) == len(canon)


def test_heldout_phrasing_same_questions_other_words(train: Path, tmp_path: Path) -> None:
    para = _synth(tmp_path / "para", 150, seed=3, phrasing="heldout")
    assert _jsonl(para / "vqa_answers.jsonl") == _jsonl(train / "vqa_answers.jsonl")
    assert (para / "instruct.json").read_bytes() == (train / "instruct.json").read_bytes()
    train_texts = {q["text"] for q in _jsonl(train / "vqa_questions.jsonl")}
    for q in _jsonl(para / "vqa_questions.jsonl"):
        assert q["text"] not in train_texts and q["text"].endswith("\n" + SUFFIX)


def _trigrams(template: str) -> set[tuple[str, ...]]:
    grams: set[tuple[str, ...]] = set()
    for segment in re.split(r"\{\w+\}", template.lower()):
        words = re.findall(r"[a-z]+", segment)
        grams |= {tuple(words[i : i + 3]) for i in range(len(words) - 2)}
    return grams


def test_heldout_templates_share_no_wording_with_training_ones() -> None:
    templates = questions_module.TEMPLATES
    assert set(templates["train"]) == set(templates["heldout"])
    train_grams = set().union(*(_trigrams(t) for ts in templates["train"].values() for t in ts))
    for key, heldout in templates["heldout"].items():
        assert len(heldout) >= 2 and len(templates["train"][key]) >= 2
        for template in heldout:
            assert not _trigrams(template) & train_grams, template


def _turn_types(out: Path) -> Counter[str]:
    """How many instruction turns of the records in `out` are of each question type (descriptions apart)."""
    types: Counter[str] = Counter()
    for record in json.loads((out / "instruct.json").read_text()):
        if "image" not in record:
            continue
        for human in record["conversations"][::2]:
            question = human["value"].replace("<image>", "").strip()
            types["describe" if _asks_for_description(question) else _question_type(question)] += 1
    return types


def test_turn_weights_shift_the_mix_of_instruction_turns(tmp_path: Path) -> None:
    uniform = _turn_types(_synth(tmp_path / "uniform", 150, seed=3))
    weighted = _turn_types(_synth(tmp_path / "weighted", 150, seed=3, turn_weights={"position": 3.0}))
    share = {
        name: c["position"] / sum(c.values()) for name, c in (("uniform", uniform), ("weighted", weighted))
    }
    assert 0.08 < share["uniform"] < 0.2 and share["weighted"] > 1.8 * share["uniform"], share
    # the images and the VQA files do not depend on the instruction mix
    for name in ("scenes.jsonl", "vqa_questions.jsonl", "vqa_answers.jsonl", "align.json"):
        assert (tmp_path / "uniform" / name).read_bytes() == (tmp_path / "weighted" / name).read_bytes()
    meta = json.loads((tmp_path / "weighted" / "synth.json").read_text())
    assert meta["turn_weights"]["position"] == 3.0 and meta["turn_weights"]["count"] == 1.0


def test_refuses_non_empty_folder_and_bad_settings(tmp_path: Path) -> None:
    out = _synth(tmp_path / "x", 3, seed=0)
    with pytest.raises(MllmError, match="folder is not empty"):
        _synth(out, 3, seed=0)
    _synth(out, 2, seed=1, overwrite=True)
    assert len(list((out / "images").glob("*.png"))) == 2
    with pytest.raises(MllmError, match="--image-size 16"):
        _synth(tmp_path / "y", 3, seed=0, image_size=16)
    with pytest.raises(MllmError, match="--split"):
        _synth(tmp_path / "z", 3, seed=0, split="val")
    with pytest.raises(MllmError, match=r"--turn-weight where=2.0: valid types are color, .*, describe"):
        _synth(tmp_path / "z", 3, seed=0, turn_weights={"where": 2.0})
    with pytest.raises(MllmError, match="--turn-weight count=0: the weight must be positive"):
        _synth(tmp_path / "z", 3, seed=0, turn_weights={"count": 0})


def _kind_counts(out: Path) -> list[tuple[int, bool]]:
    """(gold count, whether the scene holds that question's kind more than once) of every instruction turn
    that counts one colour or one shape, recomputed from the scenes."""
    scenes = {s["image"]: s for s in _jsonl(out / "scenes.jsonl")}
    rows = []
    for record in json.loads((out / "instruct.json").read_text()):
        if "image" not in record:
            continue
        objects = scenes[record["image"]]["objects"]
        for human in record["conversations"][::2]:
            question = human["value"].replace("<image>", "").strip()
            if _asks_for_description(question) or _question_type(question) != "count":
                continue
            colors, shapes, _ = _mentions(question.replace(SUFFIX, ""))
            key, value = ("shape", shapes[0]) if shapes else ("color", colors[0]) if colors else (None, None)
            if key is None:
                continue
            tally = Counter(o[key] for o in objects)
            rows.append((tally[value], max(tally.values()) > 1))
    return rows


def test_count_repeated_asks_about_colours_and_shapes_seen_more_than_once(tmp_path: Path) -> None:
    natural = _kind_counts(_synth(tmp_path / "natural", 150, seed=3))
    always = _kind_counts(_synth(tmp_path / "always", 150, seed=3, count_repeated=1.0))
    # at 1.0 every such turn about a scene with a repeated colour / shape asks about one of those
    assert all(n >= 2 for n, repeated in always if repeated)
    many = {
        name: sum(n >= 2 for n, _ in rows) / len(rows)
        for name, rows in (("natural", natural), ("always", always))
    }
    assert many["natural"] < 0.2 and many["always"] > 2 * many["natural"], many
    for name in ("scenes.jsonl", "vqa_questions.jsonl", "vqa_answers.jsonl", "align.json"):
        assert (tmp_path / "natural" / name).read_bytes() == (tmp_path / "always" / name).read_bytes()
    assert json.loads((tmp_path / "always" / "synth.json").read_text())["count_repeated"] == 1.0
    # 0 draws nothing extra: the same bytes as before the option existed
    zero = _synth(tmp_path / "zero", 150, seed=3, count_repeated=0.0)
    assert (zero / "instruct.json").read_bytes() == (tmp_path / "natural" / "instruct.json").read_bytes()
    with pytest.raises(MllmError, match=r"--count-repeated 1.5: must be in \[0, 1\]"):
        _synth(tmp_path / "z", 3, seed=0, count_repeated=1.5)


def test_align_counts_open_each_caption_with_the_scene_counts(train: Path, tmp_path: Path) -> None:
    """`align_counts` prefixes every align caption with the total and each colour's and shape's count (read
    independently from scenes.jsonl here) and changes no other file."""
    counted = _synth(tmp_path / "counted", 150, seed=3, align_counts=True)
    scenes = {s["image"]: s for s in _jsonl(counted / "scenes.jsonl")}
    plain = {r["id"]: r for r in json.loads((train / "align.json").read_text())}
    pattern = re.compile(r"^(\d+) objects?; ((?:\w+: \d+, )*\w+: \d+); ((?:\w+: \d+, )*\w+: \d+)\. (.*)$")
    for record in json.loads((counted / "align.json").read_text()):
        objects = scenes[record["image"]]["objects"]
        text = record["conversations"][1]["value"]
        match = pattern.match(text)
        assert match, text
        total, by_color, by_shape, rest = match.groups()
        assert int(total) == len(objects)
        for part, key, order in ((by_color, "color", list(COLORS)), (by_shape, "shape", list(SHAPES))):
            pairs = [item.split(": ") for item in part.split(", ")]
            tally = Counter(o[key] for o in objects)
            assert {name: int(n) for name, n in pairs} == dict(tally), (text, key)
            assert [name for name, _ in pairs] == [name for name in order if tally[name]], text
        assert plain[record["id"]]["conversations"][1]["value"] == rest
        assert plain[record["id"]]["conversations"][0] == record["conversations"][0]
    for name in ("scenes.jsonl", "pairs.jsonl", "instruct.json", "vqa_questions.jsonl", "vqa_answers.jsonl"):
        assert (counted / name).read_bytes() == (train / name).read_bytes(), name
    assert json.loads((counted / "synth.json").read_text())["align_counts"] is True
    assert json.loads((train / "synth.json").read_text())["align_counts"] is False
