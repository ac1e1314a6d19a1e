"""The multimodal model: frozen vision tower -> projector -> image features merged into the LLM's input
embeddings at the placeholder positions (count checked, `masked_scatter`), forward with loss, and generate."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.modeling_outputs import CausalLMOutputWithPast

from mllm.config import ModelConfig
from mllm.errors import MllmError
from mllm.llm import apply_lora, context_length, load_llm, load_tokenizer
from mllm.positions import image_position_ids
from mllm.processor import MultimodalProcessor
from mllm.projectors import Projector, build_projector
from mllm.vision import VisionTower

log = logging.getLogger(__name__)


@dataclass
class ParamGroup:
    """Parameter counts of one part of the model."""

    name: str
    trainable: int
    total: int

    @property
    def status(self) -> str:
        if self.trainable == 0:
            return "frozen"
        return "trainable" if self.trainable == self.total else "partly trainable"


def _count(params: Iterable[nn.Parameter]) -> tuple[int, int]:
    trainable = total = 0
    for p in params:
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return trainable, total


class MultimodalModel(nn.Module):
    """Vision tower + projector + causal LLM (optionally wrapped with peft LoRA)."""

    def __init__(
        self,
        config: ModelConfig,
        vision: VisionTower,
        projector: Projector,
        llm: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        super().__init__()
        if config.image_position_step < 0:
            raise MllmError(f"image_position_step {config.image_position_step}: expected 0 or more")
        self.config = config
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.tokenizer = tokenizer
        self.num_image_tokens = projector.num_tokens(vision.num_features)
        self.processor = MultimodalProcessor(
            tokenizer,
            config.llm.image_token,
            self.num_image_tokens,
            system_prompt=config.system_prompt,
            max_length=context_length(config.llm, llm),
        )
        self.image_token_id = self.processor.image_token_id
        self.inference_precision = "fp32"  # set by mllm.quantize.apply_precision

    @classmethod
    def build(
        cls, config: ModelConfig, with_lora: bool | None = None, device: torch.device | None = None
    ) -> MultimodalModel:
        """Load or initialise every part from `config`, on `device` when given; LoRA adapters are added when
        `config.lora.enabled` (or `with_lora`). Only the projector and LoRA are trainable."""
        tokenizer = load_tokenizer(config.llm)
        llm = load_llm(config.llm, device)
        if config.lora.enabled if with_lora is None else with_lora:
            llm = apply_lora(llm, config.lora)
        vision = VisionTower(config.vision)
        embeddings = llm.get_input_embeddings()
        projector = build_projector(
            config.projector,
            vision.hidden_size,
            embeddings.embedding_dim,
            class_token=vision.num_features > vision.num_patches,
        )
        # the image path goes where the LLM is (a quantized LLM without a device is placed by bitsandbytes)
        vision.to(embeddings.weight.device)
        projector.to(embeddings.weight.device)
        return cls(config, vision, projector, llm, tokenizer)

    @property
    def device(self) -> torch.device:
        return self.llm.get_input_embeddings().weight.device

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[n_images, 3, H, W] -> [n_images, N, D_llm]."""
        features = self.vision(pixel_values.to(self.device))
        return self.projector(features.to(next(self.projector.parameters()).dtype))

    def embed(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """Input embeddings with image features scattered into the image placeholder positions, in order."""
        input_ids = input_ids.to(self.device)
        mask = input_ids == self.image_token_id
        embeddings = self.llm.get_input_embeddings()
        inputs_embeds = embeddings(input_ids.masked_fill(mask, 0))
        num_tokens = int(mask.sum())
        if pixel_values is None or pixel_values.shape[0] == 0:
            if num_tokens:
                raise MllmError(
                    f"Image features and image tokens do not match: tokens {num_tokens}, features 0"
                )
            return inputs_embeds
        features = self.image_features(pixel_values)
        features = features.reshape(-1, features.shape[-1])
        if features.shape[0] != num_tokens:
            raise MllmError(
                f"Image features and image tokens do not match: tokens {num_tokens}, features {features.shape[0]}"
            )
        return inputs_embeds.masked_scatter(mask.unsqueeze(-1), features.to(inputs_embeds.dtype))

    def position_ids(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor | None:
        """The LLM's rotary positions for `input_ids` [B, T]: None with an image position step of 1 (the LLM
        counts them itself), else mllm.positions'."""
        step = self.config.image_position_step
        if step == 1:
            return None
        return image_position_ids(
            input_ids.to(self.device), self.image_token_id, self.num_image_tokens, step, attention_mask
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        logits_at: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """LLM forward on the merged embeddings; returns the loss when `labels` are given.

        With `logits_at` (a bool mask [B, T]), only the positions it marks go through the LM head and the logits
        come back flattened, [n_marked, vocab] in row-major order: training needs logits only where the next
        token is supervised, and the LM head over every position of a batch would cost more than the rest."""
        inputs_embeds = self.embed(input_ids, pixel_values)
        if attention_mask is not None:
            attention_mask = attention_mask.to(self.device)
        positions = self.position_ids(input_ids, attention_mask)
        if positions is not None:
            kwargs.setdefault("position_ids", positions)
            # without a mask, transformers would read the jumps in positions as packed sequences
            if attention_mask is None:
                attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=self.device)
        if logits_at is not None:
            if labels is not None:
                raise ValueError("pass either labels or logits_at, not both")
            decoder = self.llm.get_decoder()
            hidden = decoder(
                inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs
            ).last_hidden_state
            logits = self.llm.get_output_embeddings()(hidden[logits_at.to(hidden.device)])
            return CausalLMOutputWithPast(logits=logits)
        if labels is not None:
            labels = labels.to(self.device)
        return self.llm(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        pixel_values: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """transformers' generate on the merged embeddings (KV cache on by default); returns only new tokens."""
        inputs_embeds = self.embed(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long)
        generate_kwargs.setdefault("pad_token_id", self.tokenizer.pad_token_id)
        positions = self.position_ids(input_ids, attention_mask)
        if positions is not None:  # generate goes on from the last one
            generate_kwargs.setdefault("position_ids", positions)
        return self.llm.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask.to(self.device), **generate_kwargs
        )

    def set_trainable(self, projector: bool = True, lora: bool = True, llm: bool = False) -> None:
        """Choose what trains; the vision tower never does."""
        self.vision.requires_grad_(False)
        self.projector.requires_grad_(projector)
        for name, param in self.llm.named_parameters():
            param.requires_grad_(llm or (lora and "lora_" in name))

    def parameter_groups(self) -> list[ParamGroup]:
        """Trainable and total parameter counts of the vision tower, projector, LLM base and LoRA."""
        lora = [p for n, p in self.llm.named_parameters() if "lora_" in n]
        base = [p for n, p in self.llm.named_parameters() if "lora_" not in n]
        groups = [
            ParamGroup("vision", *_count(self.vision.parameters())),
            ParamGroup("projector", *_count(self.projector.parameters())),
            ParamGroup("llm", *_count(base)),
        ]
        if lora:
            groups.append(ParamGroup("lora", *_count(lora)))
        return groups

    def describe_trainable(self) -> str:
        """One line per part: frozen or trainable, with parameter counts."""
        return "\n".join(
            f"{g.name:<10} {g.status:<17} {g.trainable:>12,} / {g.total:>12,}"
            for g in self.parameter_groups()
        )
