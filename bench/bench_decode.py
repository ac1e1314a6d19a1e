"""Decode speed and time to first token: mllm's default (fast) path against transformers'
LlavaForConditionalGeneration built by `mllm export --format hf-llava` from the same model, with its plain
generate (given the exported folder's position ids when the model's image tokens are not one position apart,
as the export's USAGE.md says); plus this machine's memory-bandwidth limit for decode."""

from __future__ import annotations

import statistics
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


def shapes_image(size: int = 128, variant: int = 0) -> Any:
    """A red circle and a blue square; `variant` moves them, so each variant is a new image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(image)
    dx, dy, shade = variant % 4 * 4, variant // 4 % 4 * 4, variant // 16
    draw.ellipse((10 + dx, 10 + dy, 50 + dx, 50 + dy), fill=(230 - shade, 30, 30))
    draw.rectangle((70 - dx, 70 - dy, 110 - dx, 110 - dy), fill=(30, 30, 230 - shade))
    return image


class Images:
    """A new image for every call (cycling through 256 variants), so no run reuses another's image: the
    prompt-prefix cache then reuses only what a new chat would (the system prompt)."""

    def __init__(self) -> None:
        self.images = [shapes_image(variant=v) for v in range(256)]
        self.calls = 0

    def next(self) -> Any:
        self.calls += 1
        return self.images[self.calls % len(self.images)]


def run(spec: str, new_tokens: int = 128, repeats: int = 3) -> list[dict[str, Any]]:
    import mllm
    from mllm.assistant import load_model, merge_for_inference
    from mllm.decoding import decode_tokens
    from mllm.positions import image_position_ids
    from serve.export import build_llava

    images = Images()
    messages = [{"role": "user", "content": QUESTION}]
    # on the CPU, as the reference runs (a GPU, when there is one, is not what these figures measure)
    fast = mllm.load(spec, device="cpu")  # the default path: LoRA merged, lean token loop, precision auto
    exact = mllm.load(spec, precision="fp32", device="cpu")  # the same loop at fp32: greedy = generate
    reference, processor = build_llava(merge_for_inference(load_model(spec)))
    reference.eval()
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}],
        add_generation_prompt=True,
    )

    def decoder(assistant: Any) -> Any:
        def decode() -> list[int]:
            ids, pixels = assistant.prepare(messages, [images.next()])
            return list(
                decode_tokens(
                    assistant.model,
                    ids,
                    pixels,
                    new_tokens,
                    min_new_tokens=new_tokens,
                    prefix_cache=assistant.prefix_cache,
                )
            )

        return decode

    def first_token(assistant: Any) -> Any:
        def first() -> int:
            ids, pixels = assistant.prepare(messages, [images.next()])
            tokens = decode_tokens(
                assistant.model, ids, pixels, 1, min_new_tokens=1, prefix_cache=assistant.prefix_cache
            )
            return next(tokens)

        return first

    def reference_inputs() -> dict[str, Any]:
        inputs = dict(processor(images=[images.next()], text=prompt, return_tensors="pt"))
        step = getattr(reference.config, "image_position_step", 1)
        if step != 1:  # what the exported folder's mllm_positions.py computes
            inputs["position_ids"] = image_position_ids(
                inputs["input_ids"],
                reference.config.image_token_id,
                reference.config.image_seq_length,
                step,
                inputs["attention_mask"],
            )
        return inputs

    def reference_decode() -> list[int]:
        inputs = reference_inputs()
        with torch.inference_mode():
            out = reference.generate(
                **inputs, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False
            )
        return out[0, inputs["input_ids"].shape[1] :].tolist()

    def reference_first() -> Any:
        inputs = reference_inputs()
        with torch.inference_mode():
            return reference.generate(**inputs, max_new_tokens=1, do_sample=False)

    images.calls = -1  # the three greedy runs compared token by token all see image 0
    reference_tokens = reference_decode()
    images.calls = -1
    exact_tokens = decoder(exact)()
    images.calls = -1
    fast_tokens = decoder(fast)()
    assert len(reference_tokens) == len(fast_tokens) == new_tokens
    same_exact = sum(a == b for a, b in zip(exact_tokens, reference_tokens))
    same_fast = sum(a == b for a, b in zip(fast_tokens, reference_tokens))
    # this machine's read bandwidth varies from run to run (31-60 GB/s seen on the 2-core benchmark machine), so
    # it is measured between the decode runs it bounds, and the median taken
    bandwidths: list[float] = []

    def sample() -> None:
        bandwidths.append(read_bandwidth_gbs())

    decode = alternate("decode", decoder(fast), reference_decode, repeats=repeats, between=sample)
    decode_exact = alternate("decode fp32", decoder(exact), reference_decode, repeats=repeats, between=sample)
    # a first token takes a fraction of a second: enough repeats for a stable median
    first = alternate("ttft", first_token(fast), reference_first, repeats=max(repeats, 15))
    first_exact = alternate("ttft fp32", first_token(exact), reference_first, repeats=max(repeats, 15))
    bandwidth = statistics.median(bandwidths)
    bytes_per_token = weight_bytes_per_token(exact.model.llm)
    limit = bandwidth * 1e9 / bytes_per_token
    precision = fast.model.inference_precision
    ref_tps = new_tokens / decode.reference_s
    rows = []
    for label, timing, same in (
        (f"mllm default path ({precision} weights, lean token loop)", decode, same_fast),
        ("mllm at fp32 (lean token loop)", decode_exact, same_exact),
    ):
        tps = new_tokens / timing.candidate_s
        rows.append(
            {
                "path": label,
                "tokens/s": tps,
                "x reference": tps / (new_tokens / timing.reference_s),
                "fraction of fp32 bandwidth limit": tps / limit,
                "greedy tokens equal to reference": f"{same}/{new_tokens}",
            }
        )
    rows.append(
        {
            "path": "transformers LlavaForConditionalGeneration.generate (fp32)",
            "tokens/s": ref_tps,
            "x reference": 1.0,
            "fraction of fp32 bandwidth limit": ref_tps / limit,
            "greedy tokens equal to reference": f"{new_tokens}/{new_tokens}",
        }
    )
    return [
        {
            "title": f"Decode speed, batch 1, {new_tokens} new tokens, one image ({spec})",
            "note": f"fp32 bandwidth limit: {bytes_per_token / 1e6:.0f} MB of fp32 weights per token at "
            f"{bandwidth:.1f} GB/s measured read bandwidth (median of {len(bandwidths)} measurements taken "
            f"between the decode runs, {min(bandwidths):.1f}-{max(bandwidths):.1f} GB/s) = {limit:.1f} "
            "tokens/s. Targets: mllm >= 3x the "
            "reference, >= 50% of the limit. Each mllm row's 'x reference' is against the reference runs "
            "alternated with it.",
            "rows": rows,
        },
        {
            "title": f"Time to first token, one image ({spec})",
            "note": "Image preprocessing + encoding + prefill + first token, a new image every run (mllm reuses "
            "only the system prompt's cached prefix, as in a new chat). Target: mllm <= 0.5x the reference.",
            "rows": [
                {
                    "path": f"mllm default path ({precision})",
                    "seconds": first.candidate_s,
                    "x reference time": first.candidate_s / first.reference_s,
                },
                {
                    "path": "mllm at fp32",
                    "seconds": first_exact.candidate_s,
                    "x reference time": first_exact.candidate_s / first_exact.reference_s,
                },
                {
                    "path": "transformers LlavaForConditionalGeneration.generate (fp32)",
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
