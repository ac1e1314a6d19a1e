"""Projectors from vision features to LLM input embeddings, one interface [B, P, Dv] -> [B, N, Dl].

Picked by exact name from PROJECTORS: `linear`, `mlp2x_gelu` (LLaVA-1.5) and `qformer` (transformers'
Blip2QFormerModel reading the patches through N learned query tokens).

With `class_tokens: K` > 1 (linear and mlp2x_gelu, on a tower that keeps its class token first) the class token
gets its own MLP that makes K LLM tokens of it, so that the LLM can attend to parts of the image-level summary
separately; the patches go through the projector as before.

With `pool_tokens: K` > 0 (linear and mlp2x_gelu) K more tokens come first, made by their own MLP of the mean
patch feature (the class token left out): what the patches hold in common, above all how many of each kind of
object there are, since every patch adds its share to the mean, where attention in the LLM would average it away.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

from mllm.config import ProjectorConfig
from mllm.errors import MllmError
from mllm.registry import Registry


class Projector(nn.Module):
    """Base class: maps [B, P, vision_dim] to [B, num_tokens(P), llm_dim]. Subclasses implement `project`
    (every feature); with `config.class_tokens` > 1 the first feature (the class token) instead becomes that many
    tokens through `class_head`; with `config.pool_tokens` > 0 that many tokens of the mean patch feature come
    first, through `pool_head`. `class_token`: the features start with the tower's class token."""

    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, class_token: bool = False
    ) -> None:
        super().__init__()
        self.config = config
        self.vision_dim = vision_dim
        self.llm_dim = llm_dim
        self.class_token = class_token
        self.class_head: nn.Sequential | None = None
        if config.class_tokens > 1:
            self.class_head = _token_head(vision_dim, llm_dim, config.class_tokens)
        self.pool_head: nn.Sequential | None = None
        if config.pool_tokens > 0:
            self.pool_head = _token_head(vision_dim, llm_dim, config.pool_tokens)

    def num_tokens(self, num_patches: int) -> int:
        """How many LLM tokens one image of `num_patches` features (the class token included) becomes."""
        count = num_patches if self.class_head is None else num_patches - 1 + self.config.class_tokens
        return count + self.config.pool_tokens

    def project(self, features: torch.Tensor) -> torch.Tensor:
        """[B, P, vision_dim] -> [B, N, llm_dim]: one token per feature, or the qformer's N queries."""
        raise NotImplementedError

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch = features.shape[0]
        if self.class_head is None:
            tokens = self.project(features)
        else:
            head = self.class_head(features[:, 0]).view(batch, self.config.class_tokens, self.llm_dim)
            tokens = torch.cat([head, self.project(features[:, 1:])], dim=1)
        if self.pool_head is None:
            return tokens
        patches = features[:, 1:] if self.class_token else features
        pooled = self.pool_head(patches.mean(dim=1)).view(batch, self.config.pool_tokens, self.llm_dim)
        return torch.cat([pooled, tokens], dim=1)


def _token_head(vision_dim: int, llm_dim: int, count: int) -> nn.Sequential:
    """Linear -> GELU -> Linear from one feature to `count` LLM tokens (flattened)."""
    return nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, count * llm_dim))


ProjectorFactory = Callable[[ProjectorConfig, int, int, bool], Projector]
PROJECTORS: Registry[ProjectorFactory] = Registry("projector")


@PROJECTORS.register("linear")
class LinearProjector(Projector):
    """One linear layer per patch (LLaVA-1.0)."""

    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, class_token: bool = False
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, class_token)
        self.proj = nn.Linear(vision_dim, llm_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


@PROJECTORS.register("mlp2x_gelu")
class MLPProjector(Projector):
    """Linear -> GELU -> Linear per patch (LLaVA-1.5)."""

    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, class_token: bool = False
    ) -> None:
        super().__init__(config, vision_dim, llm_dim, class_token)
        self.fc1 = nn.Linear(vision_dim, llm_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(llm_dim, llm_dim)

    def project(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(features)))


@PROJECTORS.register("qformer")
class QFormerProjector(Projector):
    """BLIP-2 Q-Former: N learned queries cross-attend to the patches, then a linear map to the LLM width."""

    def __init__(
        self, config: ProjectorConfig, vision_dim: int, llm_dim: int, class_token: bool = False
    ) -> None:
        if config.class_tokens > 1:
            raise MllmError(
                f"projector: field class_tokens: {config.class_tokens} is for linear and mlp2x_gelu; the qformer "
                "reads the class token with the patches (set class_tokens: 1)"
            )
        if config.pool_tokens > 0:
            raise MllmError(
                f"projector: field pool_tokens: {config.pool_tokens} is for linear and mlp2x_gelu; the qformer's "
                "queries pool the patches themselves (set pool_tokens: 0)"
            )
        super().__init__(config, vision_dim, llm_dim, class_token)
        qconfig = Blip2QFormerConfig(
            hidden_size=config.qformer_hidden_size,
            num_hidden_layers=config.qformer_num_layers,
            num_attention_heads=config.qformer_num_heads,
            intermediate_size=4 * config.qformer_hidden_size,
            encoder_hidden_size=vision_dim,
            cross_attention_frequency=1,
        )
        self.qformer = Blip2QFormerModel(qconfig)
        self.query_tokens = nn.Parameter(
            torch.randn(1, config.num_query_tokens, config.qformer_hidden_size) * 0.02
        )
        self.proj = nn.Linear(config.qformer_hidden_size, llm_dim)

    def num_tokens(self, num_patches: int) -> int:
        return self.config.num_query_tokens

    def project(self, features: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(features.shape[0], -1, -1).to(features.dtype)
        out = self.qformer(query_embeds=queries, encoder_hidden_states=features)
        return self.proj(out.last_hidden_state)


def build_projector(
    config: ProjectorConfig, vision_dim: int, llm_dim: int, class_token: bool = False
) -> Projector:
    """The registered projector `config.type`, initialised from `config.init_seed`. `class_token`: the features
    start with the tower's class token (required by `config.class_tokens` > 1)."""
    if config.class_tokens < 1:
        raise MllmError(f"projector: field class_tokens: {config.class_tokens}: expected 1 or more")
    if config.pool_tokens < 0:
        raise MllmError(f"projector: field pool_tokens: {config.pool_tokens}: expected 0 or more")
    if config.class_tokens > 1 and not class_token:
        raise MllmError(
            f"projector: field class_tokens: {config.class_tokens} needs the tower's class token among the "
            "features: a CLIP tower with vision.feature_select: full"
        )
    factory = PROJECTORS.get(config.type)
    with torch.random.fork_rng():
        torch.manual_seed(config.init_seed)
        return factory(config, vision_dim, llm_dim, class_token)
