"""Where image tokens sit in the LLM's rotary position sequence (`ModelConfig.image_positions`).

`sequential` (LLaVA's choice): every token, image tokens included, one position after the one before it, so
an image's tokens are laid out in row-major order and rotary attention, which favours near positions, mixes
each image token with its left and right neighbours far more than with those above and below.
`shared`: all tokens of one image take one position (that of its first token) and the text after it goes on
from there, as Qwen2-VL's M-RoPE does for the temporal axis of a still image. The LLM then finds an image
token by what it holds (the vision tower's own position embeddings already say where it is), not by how far
it is in the sequence, and the image costs one position of the context's rotary range instead of N.
"""

from __future__ import annotations

import torch


def image_position_ids(
    input_ids: torch.Tensor,
    image_token_id: int,
    tokens_per_image: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotary positions [B, T] of `input_ids` [B, T] for `shared` image positions: the image placeholders come
    in blocks of `tokens_per_image` (one block per image, in order); each block takes the position of its first
    token, every other token one more than the token before it. Padding (attention_mask 0, on either side)
    takes no position and gets 1, as transformers' generate gives it."""
    image = input_ids == image_token_id
    index_in_image = (image.long().cumsum(-1) - 1) % tokens_per_image
    step = (~image | (index_in_image == 0)).long()
    if attention_mask is not None:
        step = step * attention_mask.to(step.device).long()
    positions = step.cumsum(-1) - 1
    if attention_mask is not None:
        positions = positions.masked_fill(attention_mask.to(positions.device) == 0, 1)
    return positions
