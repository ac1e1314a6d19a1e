"""Frozen vision tower: pixels -> patch features [B, P, Dv] from a selectable hidden layer (CLIP's CLS token dropped,
or kept first with `feature_select: full`).

Any Hugging Face CLIP or SigLIP vision model loads from a hub id or local folder (a full CLIPModel folder
works too); without a source a random tower is built from the config's sizes.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PretrainedConfig,
    PreTrainedModel,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mllm.config import FEATURE_SELECT, VisionConfig
from mllm.hub import from_pretrained
from mllm.images import ImagePreprocessor
from mllm.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionFamily:
    """How to build one family of vision towers."""

    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    has_cls_token: bool


VISION_FAMILIES: Registry[VisionFamily] = Registry("vision tower type")
VISION_FAMILIES.add("clip", VisionFamily(CLIPVisionConfig, CLIPVisionModel, has_cls_token=True))
VISION_FAMILIES.add("siglip", VisionFamily(SiglipVisionConfig, SiglipVisionModel, has_cls_token=False))


def build_vision_model(config: VisionConfig) -> PreTrainedModel:
    """The underlying transformers vision model, loaded from `config.source` or randomly initialised."""
    family = VISION_FAMILIES.get(config.type)
    if config.source is not None:
        return from_pretrained(
            family.model_cls.from_pretrained,
            config.source,
            "vision tower",
            use_safetensors=True,
            use_kernels=False,  # no hub kernels (mllm.llm.load_llm)
        )
    hf_config = family.config_cls(
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        image_size=config.image_size,
        patch_size=config.patch_size,
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.init_seed)
        return family.model_cls(hf_config)


class VisionTower(nn.Module):
    """Frozen feature extractor; stays in eval mode and never receives gradients."""

    def __init__(self, config: VisionConfig, model: PreTrainedModel | None = None) -> None:
        super().__init__()
        self.config = config
        self.family = VISION_FAMILIES.get(config.type)
        self.model = model if model is not None else build_vision_model(config)
        self.model.requires_grad_(False)
        self.model.eval()
        hf = self.model.config
        self.image_size: int = hf.image_size
        self.hidden_size: int = hf.hidden_size
        self.num_patches: int = (hf.image_size // hf.patch_size) ** 2
        if config.feature_select not in FEATURE_SELECT:
            raise ValueError(
                f"feature_select {config.feature_select!r}: expected one of {', '.join(FEATURE_SELECT)}"
            )
        self.drop_cls = self.family.has_cls_token and config.feature_select == "default"
        # tokens per image that forward returns: the patches, after the class token when it is kept
        self.num_features: int = self.num_patches + int(self.family.has_cls_token and not self.drop_cls)
        num_layers = hf.num_hidden_layers
        if not -num_layers - 1 <= config.feature_layer <= num_layers:
            raise ValueError(f"feature_layer {config.feature_layer} outside the tower's {num_layers} layers")
        self.preprocess = ImagePreprocessor(self.image_size, config.image_mean, config.image_std)
        self.train(False)

    def train(self, mode: bool = True) -> VisionTower:
        """The tower is frozen: it stays in eval mode whatever the parent does."""
        super().train(False)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> [B, num_features, Dv] features of the configured layer (the CLS token first if kept)."""
        out = self.model(pixel_values.to(self.dtype), output_hidden_states=True)
        features = out.hidden_states[self.config.feature_layer]
        if self.drop_cls:
            features = features[:, 1:]
        return features
