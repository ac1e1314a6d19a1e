"""Where image tokens sit in the LLM's rotary position sequence (`ModelConfig.image_position_step`).

The first token of an image and every text token come one position after the token before them; each further
token of an image comes `step` positions after the one before it:
- 1 (LLaVA's layout): an image's tokens are consecutive in row-major order, and rotary attention, which
  favours near positions, mixes each image token with its left and right neighbours far more than with those
  above and below;
- 0: all tokens of one image share one position, as Qwen2-VL's M-RoPE does on the temporal axis of a still
  image: no image token is nearer to another than to itself;
- k > 1: an image's tokens are k positions apart, so none is as near to another as text tokens are to their
  neighbours; the image spans k * (N - 1) + 1 positions of the LLM's rotary range instead of N.
The vision tower's own position embeddings say where each token is in the image whatever the step.
"""

from __future__ import annotations

import torch


def image_position_ids(
    input_ids: torch.Tensor,
    image_token_id: int,
    tokens_per_image: int,
    step: int,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Rotary positions [B, T] of `input_ids` [B, T]: the image placeholders come in blocks of
    `tokens_per_image` (one block per image, in order); a block's first token and every other token take one
    position more than the token before them, a block's later tokens `step` more. Padding (attention_mask 0,
    on either side) takes no position and gets 1, as transformers' generate gives it."""
    image = input_ids == image_token_id
    index_in_image = (image.long().cumsum(-1) - 1) % tokens_per_image
    later = image & (index_in_image != 0)
    increments = torch.where(later, step, 1)
    if attention_mask is not None:
        increments = increments * attention_mask.to(increments.device).long()
    positions = increments.cumsum(-1) - 1
    if attention_mask is not None:
        positions = positions.masked_fill(attention_mask.to(positions.device) == 0, 1)
    return positions
