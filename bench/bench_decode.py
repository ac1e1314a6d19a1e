"""Decode speed and time to first token: mllm's default (fast) path against transformers'
LlavaForConditionalGeneration built by `mllm export --format hf-llava` from the same model, with its plain
generate; plus this machine's memory-bandwidth limit for decode."""

from __future__ import annotations

import time
from typing import Any

import torch

from bench.common import alternate, timed

QUESTION = "Describe the image in detail."


def read_bandwidth_gbs(size_mb: int = 1024) -> float:
    """Measured memory read bandwidth (GB/s): summing a tensor far larger than the caches."""
    data = torch.ones(size_mb * 2**20 // 4, dtype=torch.float32)
    data.sum()
    seconds, _ = timed(lambda: data.sum(), repeats=5)
    return data.numel() * 4 / seconds / 1e9


def weight_bytes_per_token(llm: torch.nn.Module) -> int:
    """Bytes of LLM weights read to decode one token: every parameter once, except the input embedding (only
    one row is gathered) unless it is tied to the output head."""
    embedding = llm.get_input_embeddings().weight
    head = llm.get_output_embeddings().weight
    total = sum(p.numel() * p.element_size() for p in llm.parameters())
    if embedding.data_ptr() != head.data_ptr():
        total -= embedding.numel() * embedding.element_size()
    return total


def shapes_image(size: int = 128) -> Any:
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    draw.ellipse((10, 10, 50, 50), fill=(230, 30, 30))
    draw.rectangle((70, 70, 110, 110), fill=(30, 30, 230))
    return image


def run(spec: str, new_tokens: int = 128, repeats: int = 3) -> list[dict[str, Any]]:
    import mllm
    from mllm.assistant import load_model
    from mllm.decoding import decode_tokens
    from serve.export import build_llava

    image = shapes_image()
    messages = [{"role": "user", "content": QUESTION}]
    fast = mllm.load(spec)  # the default path: LoRA merged, mllm's token loop
    reference, processor = build_llava(load_model(spec))
    reference.eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )

    def mllm_decode() -> int:
        ids, pixels = fast.prepare(messages, [image])
        return sum(1 for _ in decode_tokens(fast.model, ids, pixels, new_tokens, min_new_tokens=new_tokens))

    def reference_decode() -> int:
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        with torch.inference_mode():
            out = reference.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return out.shape[1] - inputs["input_ids"].shape[1]

    def mllm_first() -> int:
        ids, pixels = fast.prepare(messages, [image])
        return next(decode_tokens(fast.model, ids, pixels, 1, min_new_tokens=1))

    def reference_first() -> Any:
        inputs = processor(images=[image], text=prompt, return_tensors="pt")
        with torch.inference_mode():
            return reference.generate(**inputs, max_new_tokens=1, do_sample=False)

    assert mllm_decode() == new_tokens and reference_decode() == new_tokens
    decode = alternate("decode", mllm_decode, reference_decode, repeats=repeats)
    first = alternate("ttft", mllm_first, reference_first, repeats=max(repeats, 5))
    bandwidth = read_bandwidth_gbs()
    bytes_per_token = weight_bytes_per_token(fast.model.llm)
    limit = bandwidth * 1e9 / bytes_per_token
    mllm_tps = new_tokens / decode.candidate_s
    ref_tps = new_tokens / decode.reference_s
    return [
        {
            "title": f"Decode speed, batch 1, {new_tokens} new tokens, one image ({spec})",
            "note": f"Bandwidth limit: {bytes_per_token / 1e6:.0f} MB of weights per token at {bandwidth:.1f} GB/s "
            f"measured read bandwidth = {limit:.1f} tokens/s. Targets: mllm >= 3x the reference, "
            ">= 50% of the limit.",
            "rows": [
                {
                    "path": "mllm (default fast path)",
                    "tokens/s": mllm_tps,
                    "x reference": ref_tps and mllm_tps / ref_tps,
                    "fraction of bandwidth limit": mllm_tps / limit,
                },
                {
                    "path": "transformers LlavaForConditionalGeneration.generate",
                    "tokens/s": ref_tps,
                    "x reference": 1.0,
                    "fraction of bandwidth limit": ref_tps / limit,
                },
            ],
        },
        {
            "title": f"Time to first token, one image ({spec})",
            "note": "Image preprocessing + encoding + prefill + first token. Target: mllm <= 0.5x the reference.",
            "rows": [
                {
                    "path": "mllm (default fast path)",
                    "seconds": first.candidate_s,
                    "x reference time": first.candidate_s / first.reference_s,
                },
                {
                    "path": "transformers LlavaForConditionalGeneration.generate",
                    "seconds": first.reference_s,
                    "x reference time": 1.0,
                },
            ],
        },
    ]


if __name__ == "__main__":
    import sys

    start = time.time()
    for section in run(sys.argv[1] if len(sys.argv) > 1 else "configs/model/tiny-test.yaml"):
        print(section["title"], section["note"], *section["rows"], sep="\n")
    print(f"{time.time() - start:.0f} s")
