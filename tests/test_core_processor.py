"""Processor: labels cover exactly the assistant replies (and their end-of-turn token) across templates,
turn counts and image counts; a template that is not prefix-consistent raises an error naming the sample."""

from __future__ import annotations

import pytest

from mllm.chat_templates import CHAT_TEMPLATES
from mllm.errors import MllmError
from mllm.processor import IGNORE_INDEX, MultimodalProcessor, SampleError, place_images

REPLIES = ["A red star in the top left.", "Two.", "Yes, there is a blue circle."]
QUESTIONS = ["What is in the image?", "How many objects are there?", "Is there a blue circle?"]
NUM_IMAGE_TOKENS = 5


def make_record(turns: int, images: int) -> dict:
    conversations = []
    for t in range(turns):
        value = QUESTIONS[t]
        if t == 0 and images:
            value = "<image>\n" * images + value
        conversations += [{"from": "human", "value": value}, {"from": "gpt", "value": REPLIES[t]}]
    record = {"id": f"t{turns}-i{images}", "conversations": conversations}
    if images:
        record["image"] = [f"{k}.png" for k in range(images)]
    return record


def runs(labels: list[int]) -> list[list[int]]:
    """Contiguous runs of supervised token ids."""
    out: list[list[int]] = []
    current: list[int] = []
    for label in labels:
        if label == IGNORE_INDEX:
            if current:
                out.append(current)
            current = []
        else:
            current.append(label)
    if current:
        out.append(current)
    return out


@pytest.fixture(params=[None, "llama2"], ids=["smollm2-template", "llama2-template"])
def processor(request, smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    original = tokenizer.chat_template
    if request.param is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(request.param)
    yield MultimodalProcessor(tokenizer, "<image>", NUM_IMAGE_TOKENS)
    tokenizer.chat_template = original


@pytest.mark.parametrize("turns", [1, 2, 3])
@pytest.mark.parametrize("images", [0, 1, 2])
def test_labels_cover_exactly_the_replies(processor, turns, images):
    tokenizer = processor.tokenizer
    encoded = processor.encode_llava(make_record(turns, images))
    assert len(encoded.labels) == len(encoded.input_ids)
    # supervised positions carry their own token ids
    for token, label in zip(encoded.input_ids, encoded.labels):
        assert label in (IGNORE_INDEX, token)
    supervised = runs(encoded.labels)
    assert len(supervised) == turns
    eos = tokenizer.eos_token
    for run, reply in zip(supervised, REPLIES):
        text = tokenizer.decode(run)
        assert text.strip().replace(" ", "") == (reply + eos).replace(" ", "")
    # image placeholders: expanded, never supervised
    image_positions = [i for i, t in enumerate(encoded.input_ids) if t == processor.image_token_id]
    assert len(image_positions) == images * NUM_IMAGE_TOKENS
    assert all(encoded.labels[i] == IGNORE_INDEX for i in image_positions)
    assert encoded.num_images == images
    # nothing of the user's questions is supervised
    unsupervised = tokenizer.decode(
        [t for t, lab in zip(encoded.input_ids, encoded.labels) if lab == IGNORE_INDEX]
    )
    for question in QUESTIONS[:turns]:
        assert question in unsupervised


def test_text_only_and_system_prompt(smollm2_tokenizer):
    processor = MultimodalProcessor(smollm2_tokenizer, "<image>", 3, system_prompt="Be brief.")
    encoded = processor.encode_llava(make_record(1, 0))
    assert "Be brief." in smollm2_tokenizer.decode(encoded.input_ids)
    assert len(runs(encoded.labels)) == 1


def test_single_image_without_marker_gets_one(processor):
    record = make_record(1, 0)
    record["image"] = "a.png"
    encoded = processor.encode_llava(record)
    assert encoded.num_images == 1
    assert encoded.input_ids.count(processor.image_token_id) == NUM_IMAGE_TOKENS


def test_inconsistent_template_raises_naming_the_sample(smollm2_tokenizer):
    tokenizer = smollm2_tokenizer
    original = tokenizer.chat_template
    # renders the message count first: a prefix of the conversation is not a prefix of its rendering
    tokenizer.chat_template = "{{ messages|length }}" + CHAT_TEMPLATES.get("chatml")
    try:
        processor = MultimodalProcessor(tokenizer, "<image>", 2)
        with pytest.raises(SampleError, match="record t2-i0: turn 1"):
            processor.encode_llava(make_record(2, 0))
    finally:
        tokenizer.chat_template = original


def test_marker_count_mismatch_raises(processor):
    record = make_record(1, 2)
    record["image"] = ["only-one.png"]
    with pytest.raises(MllmError, match="2 <image> marker"):
        processor.encode_llava(record)


def test_unknown_role_names_record_and_field(processor):
    record = make_record(1, 0)
    record["conversations"][0]["from"] = "robot"
    with pytest.raises(SampleError, match=r"record t1-i0: conversations\[0\]\.from: unknown role 'robot'"):
        processor.encode_llava(record)


def test_image_marker_in_reply_raises(processor):
    record = make_record(1, 0)
    record["conversations"][1]["value"] = "<image> here"
    record["image"] = "a.png"
    with pytest.raises(SampleError, match="inside an assistant reply"):
        processor.encode_llava(record)


def test_place_images_prepends_to_last_user_message():
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": "yo"},
        {"role": "user", "content": "what is this?"},
    ]
    placed = place_images(messages, 2, "<image>")
    assert placed[2]["content"] == "<image>\n<image>\nwhat is this?"
    assert placed[0]["content"] == "hi"
    with pytest.raises(MllmError):
        place_images([{"role": "user", "content": "<image> a"}], 2, "<image>")


def test_llava_record_without_marker_gets_it_on_the_first_turn(smollm2_tokenizer):
    processor = MultimodalProcessor(smollm2_tokenizer, "<image>", 2)
    record = make_record(2, 0)
    record["image"] = "a.png"
    encoded = processor.encode_llava(record)
    first_image = encoded.input_ids.index(processor.image_token_id)
    text_before = smollm2_tokenizer.decode(encoded.input_ids[:first_image])
    assert QUESTIONS[0] not in text_before and "user" in text_before
    assert QUESTIONS[1] not in smollm2_tokenizer.decode(encoded.input_ids[:first_image])
