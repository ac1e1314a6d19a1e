"""The small public API: load a model by name, checkpoint folder or config YAML, then chat or stream.

import mllm
assistant = mllm.load("default")
text = assistant.chat([{"role": "user", "content": "What is in the picture?"}], images=["photo.png"])
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel
from transformers import PreTrainedTokenizerBase

from mllm.checkpoint import META_FILE, load_checkpoint
from mllm.config import load_model_config
from mllm.decoding import decode_text
from mllm.devices import resolve_device
from mllm.errors import MllmError
from mllm.generation import GenerationStats, TokenCounter, cut_at_stop, sampling_kwargs, stream_generate
from mllm.images import DEFAULT_MAX_PIXELS, ImageInput
from mllm.limits import INFERENCE_PRECISIONS
from mllm.model import MultimodalModel
from mllm.prefix_cache import Layer, PrefixCache
from mllm.processor import Message, place_images
from mllm.quantize import apply_precision
from mllm.registry import Registry

log = logging.getLogger(__name__)

ASSETS = Path(__file__).parent / "assets"
SHIPPED_MODELS: Registry[Path] = Registry("shipped model")
SHIPPED_MODELS.add("default", ASSETS / "default")  # the checkpoint `make release-model` installs


def resolve_model(spec: str | Path) -> Path:
    """`default` (the shipped assistant), a checkpoint folder, or a model config YAML -> a path."""
    spec = str(spec)
    path = SHIPPED_MODELS.get(spec) if spec in SHIPPED_MODELS else Path(spec)
    if path.is_dir():
        if not (path / META_FILE).is_file():
            raise MllmError(f"{path}: not an mllm checkpoint ({META_FILE} is missing)")
        return path
    if path.is_file():
        return path
    raise MllmError(
        f"model {spec!r} not found: pass 'default', a checkpoint folder or a model config YAML "
        f"(shipped: {', '.join(SHIPPED_MODELS.names())})"
    )


def load_model(spec: str | Path, device: torch.device | None = None, **llm_overrides: Any) -> MultimodalModel:
    """Build the MultimodalModel named by `spec` (see resolve_model), on `device` when given."""
    path = resolve_model(spec)
    if path.is_dir():
        return load_checkpoint(path, device, **llm_overrides)
    config = load_model_config(path)
    for key, value in llm_overrides.items():
        setattr(config.llm, key, value)
    return MultimodalModel.build(config, device=device)


class Assistant:
    """A loaded model ready to chat. Thread-safe for concurrent generation (inference only).

    `fast=True` (the default) decodes with mllm.decoding's token loop, `fast=False` with transformers'
    generate; greedy outputs are the same. Extra generate() keyword arguments always take the generate path.
    `load` also merges LoRA into the LLM weights for its fast path (merge_for_inference)."""

    def __init__(self, model: MultimodalModel, name: str = "mllm", fast: bool = True) -> None:
        self.model = model.eval()  # never modified here: a training loop may hand over the model it trains
        self.name = name
        self.fast = fast
        self.max_pixels = DEFAULT_MAX_PIXELS
        self.prefix_cache = PrefixCache()  # fast path: prompts that start alike prefill only what is new
        # batches (mllm.batch): the ids every one-message prompt starts with and their keys/values, once computed
        self.prompt_header: tuple[list[int], list[Layer]] | None = None

    @property
    def tokenizer(self) -> PreTrainedTokenizerBase:
        return self.model.tokenizer

    @property
    def context_length(self) -> int:
        return self.model.processor.max_length or 2048

    def prepare(
        self, messages: Sequence[Message], images: Sequence[ImageInput] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(input_ids [1, T], pixel_values [n, 3, H, W] or None) for a chat in role/content form."""
        images = list(images or [])
        if not messages:
            raise MllmError("no messages given")
        if len(images) > self.model.config.max_images:
            raise MllmError(
                f"{len(images)} images given; this model accepts at most {self.model.config.max_images}"
            )
        for index, message in enumerate(messages):
            if message.get("role") not in ("system", "user", "assistant"):
                raise MllmError(
                    f"messages[{index}].role: expected system, user or assistant, got {message.get('role')!r}"
                )
            if not isinstance(message.get("content"), str):
                raise MllmError(f"messages[{index}].content: expected text")
        placed = place_images(messages, len(images), self.model.config.llm.image_token)
        encoded = self.model.processor.encode_prompt(placed)
        pixel_values = self.model.vision.preprocess(images, self.max_pixels) if images else None
        return torch.tensor([encoded.input_ids]), pixel_values

    def _generate_kwargs(
        self, prompt_len: int, max_new_tokens: int, temperature: float, top_p: float, extra: dict[str, Any]
    ) -> dict[str, Any]:
        room = self.context_length - prompt_len
        if room <= 0:
            raise MllmError(
                f"the conversation is {prompt_len} tokens, over the context of {self.context_length}"
            )
        if max_new_tokens < 1:
            raise MllmError("max_new_tokens must be at least 1")
        return {"max_new_tokens": min(max_new_tokens, room), **sampling_kwargs(temperature, top_p), **extra}

    def chat(
        self,
        messages: Sequence[Message],
        images: Sequence[ImageInput] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        **generate_kwargs: Any,
    ) -> str:
        """The assistant's reply to `messages` (role/content dicts); images go where `<image>` appears, or before
        the last user message's text. Extra keyword arguments go to transformers' generate."""
        if self.fast and not generate_kwargs:
            return "".join(self.stream(messages, images, max_new_tokens, temperature, top_p, stop))
        input_ids, pixel_values = self.prepare(messages, images)
        kwargs = self._generate_kwargs(
            input_ids.shape[1], max_new_tokens, temperature, top_p, generate_kwargs
        )
        if stop:
            kwargs.update(stop_strings=list(stop), tokenizer=self.tokenizer)
        output = self.model.generate(input_ids, pixel_values=pixel_values, **kwargs)
        text = self.tokenizer.decode(output[0], skip_special_tokens=True)
        return cut_at_stop(text, stop)[0]

    def stream(
        self,
        messages: Sequence[Message],
        images: Sequence[ImageInput] | None = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        cancel: threading.Event | None = None,
        stats: GenerationStats | None = None,
        **generate_kwargs: Any,
    ) -> Iterator[str]:
        """Like `chat`, yielding the reply piece by piece; setting `cancel` (or closing the iterator) stops it.
        `stats` (a GenerationStats) receives prompt and completion token counts and the finish reason."""
        stats = stats if stats is not None else GenerationStats()
        input_ids, pixel_values = self.prepare(messages, images)
        kwargs = self._generate_kwargs(
            input_ids.shape[1], max_new_tokens, temperature, top_p, generate_kwargs
        )
        max_new = kwargs["max_new_tokens"]
        if self.fast and not generate_kwargs:
            return decode_text(
                self.model,
                input_ids,
                pixel_values,
                max_new,
                temperature,
                top_p,
                stop,
                cancel,
                stats,
                prefix_cache=self.prefix_cache,
            )
        stats.prompt_tokens = int(input_ids.shape[1])
        criteria = [*kwargs.pop("stopping_criteria", []), TokenCounter(stats)]
        pieces = stream_generate(  # stop strings are cut from the stream, which then cancels generation
            self.model.generate,
            self.tokenizer,
            stop=stop,
            cancel=cancel,
            input_ids=input_ids,
            pixel_values=pixel_values,
            stopping_criteria=criteria,
            **kwargs,
        )
        return _finish_reason(pieces, stats, max_new)


def _finish_reason(pieces: Iterator[str], stats: GenerationStats, max_new_tokens: int) -> Iterator[str]:
    yield from pieces
    stats.finish_reason = "length" if stats.completion_tokens >= max_new_tokens else "stop"


def merge_for_inference(model: MultimodalModel, quantized_too: bool = False) -> MultimodalModel:
    """Merge LoRA adapters into the LLM weights (faster decoding; the adapters are gone afterwards, so only
    for a model that is not trained or saved again; no-op without LoRA). A 4/8-bit LLM keeps its adapters
    unless `quantized_too` (peft then merges into the quantized weights, as an export wants)."""
    quantized = model.config.llm.load_in_4bit or model.config.llm.load_in_8bit
    if isinstance(model.llm, PeftModel) and (quantized_too or not quantized):
        log.info("merging LoRA adapters into the LLM")
        model.llm = model.llm.merge_and_unload()
    return model


def load(
    spec: str | Path = "default",
    load_in_4bit: bool = False,
    load_in_8bit: bool = False,
    fast: bool = True,
    precision: str = "auto",
    batches: bool = False,
    device: str = "auto",
    **llm_overrides: Any,
) -> Assistant:
    """Load an Assistant: `default` (the shipped assistant), a checkpoint folder, or a model config YAML.
    `fast` picks the merged-LoRA token loop (default) over transformers' generate, at inference `precision`
    (mllm.quantize: `auto` is bf16 matmuls on CPUs with AMX, else fp16 weights on CPUs with the kernels for it,
    `fp32` keeps the weights; with `batches`, for an assistant that will mostly answer many prompts at once
    through mllm.batch, `auto` is bf16 on CPUs with AVX-512 BF16 too; on a GPU `auto` is bf16 where the GPU
    has it, else fp16); `fast=False` is the plain fp32 path. `device`: `auto` (a CUDA GPU when there is one,
    else the CPU), `cpu`, `cuda` or `cuda:N` (mllm.devices)."""
    if load_in_4bit:
        llm_overrides["load_in_4bit"] = True
    if load_in_8bit:
        llm_overrides["load_in_8bit"] = True
    if precision not in INFERENCE_PRECISIONS:
        raise MllmError(f"unknown precision {precision!r}; valid: {', '.join(INFERENCE_PRECISIONS)}")
    model = load_model(spec, resolve_device(device), **llm_overrides)
    if fast:
        model = apply_precision(merge_for_inference(model), precision, batches)
    return Assistant(model, name=model.config.name, fast=fast)
