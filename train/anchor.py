"""The text anchor of stage `instruct` (`text_anchor: W`): text-only rows of a batch are trained towards the
base LLM's own next-token distributions instead of their written answers.

A text-only chat in the instruction data is there to keep the LLM's text skills, but trained as targets its
answers teach their own wording and facts, and the shapes world's answers still leak into general questions
("The pyramids of Giza are at the top right."). With the anchor, each supervised position of a text-only row
costs W times KL(base || tuned) of the next-token distributions, the base being the same LLM with its LoRA
adapter switched off (peft's `disable_adapter`, no second copy of the weights): the row pulls the adapter back
to what the base would say there, whatever the chat's answer says. Rows with an image keep the usual
cross-entropy. The extra cost is one no-grad forward of the text-only rows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from peft import PeftModel

from mllm.errors import MllmError
from mllm.model import MultimodalModel
from train.evaluate import ForwardFn, supervised_logits


def anchored_loss(
    forward: ForwardFn, model: MultimodalModel, batch: dict[str, Any], weight: float
) -> tuple[torch.Tensor, int]:
    """(loss per supervised token, their count): cross-entropy at the positions of rows with an image, `weight`
    times KL(base || tuned) at those of text-only rows. `forward` is the training forward (the DeepSpeed engine
    or the model); `model` the MultimodalModel whose LLM carries the LoRA adapter."""
    if not isinstance(model.llm, PeftModel):
        raise MllmError("text_anchor needs a LoRA adapter on the LLM (llm: lora, qlora4 or qlora8)")
    input_ids: torch.Tensor = batch["input_ids"]
    logits, target, at = supervised_logits(forward, batch)
    count = int(target.numel())
    text_rows = ~(input_ids == model.image_token_id).any(dim=1)
    on_text = text_rows[at.nonzero()[:, 0]].to(logits.device)  # the row of each flattened logit
    loss = F.cross_entropy(logits[~on_text], target[~on_text], reduction="sum")
    if bool(on_text.any()):
        with torch.no_grad(), model.llm.disable_adapter():
            base = model(
                input_ids=input_ids[text_rows],
                attention_mask=batch["attention_mask"][text_rows],
                pixel_values=None,
                logits_at=at[text_rows],
            ).logits.float()
        tuned = F.log_softmax(logits[on_text], dim=-1)
        kl = F.kl_div(tuned, F.log_softmax(base, dim=-1), log_target=True, reduction="sum")
        loss = loss + weight * kl
    return loss / max(count, 1), count
