"""What each stage builds and trains: `align` trains the projector only (vision tower and LLM frozen);
`instruct` trains the projector and LoRA (or QLoRA 4/8-bit, or the full LLM), starting from any checkpoint.

Before training the trainer logs every part as frozen or trainable with its parameter counts and refuses to
start when nothing is trainable.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from peft import PeftModel, prepare_model_for_kbit_training

from mllm.assistant import load_model
from mllm.config import load_model_config
from mllm.errors import MllmError
from mllm.llm import apply_lora
from mllm.model import MultimodalModel
from train.config import TrainConfig

log = logging.getLogger(__name__)
LORA_MODES = ("lora", "qlora4", "qlora8")


def llm_overrides(config: TrainConfig) -> dict[str, bool]:
    """LLM loading overrides for QLoRA."""
    if config.llm == "qlora4":
        return {"load_in_4bit": True}
    if config.llm == "qlora8":
        return {"load_in_8bit": True}
    return {}


def build_stage_model(config: TrainConfig, source: str | None = None) -> MultimodalModel:
    """The model a run starts from: `source` (a checkpoint, when resuming), else `init_from`, else the model
    YAML; then LoRA added or the LLM merged as `config.llm` asks, and the trainable parts chosen."""
    overrides = llm_overrides(config)
    spec = source or config.init_from
    if spec is not None:
        model = load_model(spec, **overrides)
    else:
        model_config = load_model_config(str(config.model))
        if config.vision_source is not None:
            model_config.vision.source = config.vision_source
        if config.projector is not None:
            model_config.projector = config.projector
        for key, value in overrides.items():
            setattr(model_config.llm, key, value)
        model = MultimodalModel.build(model_config, with_lora=False)
    if config.llm in LORA_MODES and not isinstance(model.llm, PeftModel):
        lora = replace(config.lora or model.config.lora, enabled=True)
        if overrides:
            model.llm = prepare_model_for_kbit_training(model.llm, use_gradient_checkpointing=False)
        model.llm = apply_lora(model.llm, lora)
        model.config.lora = lora
    elif config.llm == "full" and isinstance(model.llm, PeftModel):
        model.llm = model.llm.merge_and_unload()
        model.config.lora = replace(model.config.lora, enabled=False)
    model.set_trainable(
        projector=config.train_projector, lora=config.llm in LORA_MODES, llm=config.llm == "full"
    )
    if config.attn_implementation is not None:
        try:
            model.llm.set_attn_implementation(config.attn_implementation)
        except ValueError as exc:
            raise MllmError(f"field attn_implementation: {exc}") from None
    if config.gradient_checkpointing:
        model.llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.llm.config.use_cache = False
    return model


def check_trainable(model: MultimodalModel) -> int:
    """Log each part as frozen or trainable; the number of trainable parameters, refusing zero."""
    for line in model.describe_trainable().splitlines():
        log.info("%s", line)
    trainable = sum(group.trainable for group in model.parameter_groups())
    if trainable == 0:
        raise MllmError("nothing is trainable: set train_projector: true or llm to lora/qlora4/qlora8/full")
    return trainable
