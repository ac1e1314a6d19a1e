"""Generation: greedy output is the same with and without the KV cache; streaming yields the same text as
non-streaming; stop strings cut the reply; closing a stream early ends the worker."""

from __future__ import annotations

import threading

import pytest
import torch

import mllm
from mllm.generation import cut_at_stop

MESSAGES = [{"role": "user", "content": "Describe the picture."}]


@pytest.fixture(scope="module")
def assistant(tiny_config_path):
    from mllm.config import load_model_config
    from mllm.model import MultimodalModel

    config = load_model_config(tiny_config_path)
    config.llm.init_config["initializer_range"] = 0.3  # a random model that does not repeat one token forever
    return mllm.Assistant(MultimodalModel.build(config))


@pytest.fixture
def image():
    from PIL import Image

    return Image.new("RGB", (48, 40), (200, 30, 30))


def test_greedy_same_with_and_without_kv_cache(assistant, image):
    ids, pixels = assistant.prepare(MESSAGES, [image])
    with_cache = assistant.model.generate(ids, pixel_values=pixels, max_new_tokens=24, do_sample=False)
    without = assistant.model.generate(
        ids, pixel_values=pixels, max_new_tokens=24, do_sample=False, use_cache=False
    )
    assert with_cache.shape[1] == 24
    assert len(set(with_cache[0].tolist())) > 3  # not a degenerate single-token loop
    assert torch.equal(with_cache, without)


def test_stream_equals_chat(assistant, image):
    text = assistant.chat(MESSAGES, images=[image], max_new_tokens=24)
    pieces = list(assistant.stream(MESSAGES, images=[image], max_new_tokens=24))
    assert len(pieces) > 1
    assert "".join(pieces) == text and text


def test_stop_strings_cut_both_paths(assistant, image):
    full = assistant.chat(MESSAGES, images=[image], max_new_tokens=24)
    stop = full[len(full) // 2 : len(full) // 2 + 3]
    expected = full[: full.find(stop)]
    assert assistant.chat(MESSAGES, images=[image], max_new_tokens=24, stop=[stop]) == expected
    assert "".join(assistant.stream(MESSAGES, images=[image], max_new_tokens=24, stop=[stop])) == expected


def test_cancel_stops_stream(assistant):
    cancel = threading.Event()
    stream = assistant.stream(MESSAGES, max_new_tokens=200, cancel=cancel)
    next(stream)
    cancel.set()
    rest = list(stream)
    assert len(rest) < 200
    assert not any(t.name == "mllm-generate" and t.is_alive() for t in threading.enumerate())


def test_sampling_runs_and_respects_max_tokens(assistant):
    ids, _ = assistant.prepare(MESSAGES)
    out = assistant.model.generate(ids, max_new_tokens=5, do_sample=True, temperature=0.8, top_p=0.9)
    assert out.shape == (1, 5)


def test_cut_at_stop():
    assert cut_at_stop("hello world", ["o w", "zz"]) == ("hell", True)
    assert cut_at_stop("hello", []) == ("hello", False)


def test_too_many_images_and_bad_roles(assistant, image):
    with pytest.raises(mllm.MllmError, match="at most 4"):
        assistant.chat(MESSAGES, images=[image] * 5)
    with pytest.raises(mllm.MllmError, match=r"messages\[0\].role"):
        assistant.chat([{"role": "bot", "content": "x"}])
    with pytest.raises(mllm.MllmError, match="no messages"):
        assistant.chat([])
