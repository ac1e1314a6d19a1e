"""Typed training configuration (one YAML file per run in `configs/train/`), `key=value` overrides, and the
resolved config written next to every checkpoint.

Loading goes through `mllm.config.from_dict`, so an unknown key or a wrong type is refused with an error that
names the file and the field. Relative paths in a training config are relative to the working directory
(the repository root in every shipped config).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mllm.config import LoRAConfig, ProjectorConfig, from_dict, to_dict
from mllm.errors import MllmError

STAGES = ("clip", "align", "instruct")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
LLM_MODES = ("frozen", "lora", "qlora4", "qlora8", "full")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
IMAGE_HEADS = ("mean", "cls")  # what the clip stage's per-image heads read (ClipConfig.image_heads)
# the counts an object's patch can predict (ClipConfig.object_count_keys): all objects, of its colour, of its shape
OBJECT_COUNT_KEYS = ("all", "color", "shape")


@dataclass
class DataConfig:
    """Training and evaluation data. `train` is a LLaVA JSON/JSONL file (align, instruct) or `pairs.jsonl`
    (clip); `image_folder` holds the images the records name."""

    train: str = ""
    image_folder: str | None = None
    eval: str | None = None  # held-out records for the eval loss (same format as `train`)
    eval_image_folder: str | None = None
    max_eval_samples: int = 64
    vqa_questions: str | None = (
        None  # question file for VQA accuracy during eval (`{question_id, image, text}`)
    )
    vqa_answers: str | None = None  # gold answers (`{question_id, answer, type}`)
    vqa_image_folder: str | None = None
    max_vqa_questions: int = 100
    max_records: int | None = None  # use only the first N training records
    validate: bool = True  # run data_tools' validator (structure + image files) before training
    max_invalid_fraction: float = 0.05  # refuse to train when more records than this are invalid


@dataclass
class OptimConfig:
    """AdamW with a cosine schedule after a linear warmup; gradients clipped to `max_grad_norm`."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_ratio: float = 0.03
    min_lr_ratio: float = 0.1
    max_grad_norm: float = 1.0


@dataclass
class ClipConfig:
    """Stage `clip`: a small CLIP (vision + text tower) trained with symmetric InfoNCE, plus an auxiliary
    per-cell attribute head on the patch features so that the frozen features carry counts and positions."""

    text_hidden_size: int = 256
    text_layers: int = 4
    text_heads: int = 4
    text_max_length: int = 96
    projection_dim: int = 256
    aux_weight: float = 1.0  # weight of the per-cell attribute loss (0 = contrastive only)
    recolor_prob: float = 0.0  # chance that a training object is repainted off-palette (train/clip_data.py)
    # the fraction of max_steps (from the start) that repaints; the steps after it see only palette colours
    recolor_until: float = 1.0
    # > 0: every patch also predicts the image's counts, not only the mean patch feature, at this weight of the
    # per-patch count loss (train/clip_aux.py)
    patch_counts: float = 0.0
    # > 0: the patch holding an object's center also predicts how many objects there are in all, of its colour and
    # of its shape, at this weight of that loss (train/clip_aux.py)
    object_counts: float = 0.0
    # which of those counts the object's patch predicts (any of "all", "color", "shape"); the total is the same for
    # every object of an image, and with image_heads: cls the class token is trained on it already
    object_count_keys: list[str] = field(default_factory=lambda: list(OBJECT_COUNT_KEYS))
    # what the per-image heads (counts, background) read: "mean" = the mean patch feature, "cls" = the class token
    # at the feature layer, the image-level token a model with `vision.feature_select: full` hands the LLM
    image_heads: str = "mean"
    scenes: str | None = None  # scenes.jsonl for the auxiliary targets (default: next to `data.train`)


@dataclass
class TrainConfig:
    """One training run."""

    stage: str = "align"
    output_dir: str = "runs/train"
    model: str | None = None  # model config YAML (clip, align) ...
    init_from: str | None = None  # ... or a checkpoint folder / `default` to start from (instruct, custom)
    vision_source: str | None = None  # override the model's vision tower (e.g. a `clip` run's vision/)
    projector: ProjectorConfig | None = None  # replace the model YAML's projector (ablations)
    llm: str = "frozen"  # frozen | lora | qlora4 | qlora8 | full (what of the LLM trains)
    lora: LoRAConfig | None = None  # LoRA settings when starting LoRA (default: the model config's)
    train_projector: bool = True
    # > 0: text-only rows are trained towards the base LLM's own distributions (KL, this weight) instead of their
    # written answers (train/anchor.py); needs a LoRA adapter (llm: lora, qlora4, qlora8)
    text_anchor: float = 0.0
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    clip: ClipConfig = field(default_factory=ClipConfig)
    micro_batch_size: int = 4
    grad_accum: int = 1
    max_steps: int = 100  # optimizer steps
    seed: int = 0
    deepspeed: str = "configs/deepspeed/zero0.json"
    # auto: bf16 where the hardware multiplies it (GPUs that support it, CPUs with AVX-512 BF16 or AMX), else fp32
    precision: str = "auto"
    gradient_checkpointing: bool = False
    # transformers' attention kernel for the LLM while training (None: its default, sdpa). In bf16 on a CPU,
    # `eager` is faster at these lengths (sdpa's CPU backward is slow: instruct step 2.26 -> 1.80 s on 2 cores);
    # in fp32 it is slower (3.38 -> 3.80 s), and on GPUs sdpa is the one to keep.
    attn_implementation: str | None = None
    group_by_length: bool = True
    save_every: int = 50  # optimizer steps between checkpoints (0: only at the end)
    keep_checkpoints: int = 2
    eval_every: int = 0  # optimizer steps between evaluations (0: only at the end)
    log_every: int = 1
    num_threads: int | None = None  # torch CPU threads (None: torch's default)
    progress: bool = True

    def check(self, where: str) -> None:
        """Refuse settings that cannot work, naming the field."""
        if self.stage not in STAGES:
            raise MllmError(f"{where}: field stage: {self.stage!r} is not one of {', '.join(STAGES)}")
        if self.llm not in LLM_MODES:
            raise MllmError(f"{where}: field llm: {self.llm!r} is not one of {', '.join(LLM_MODES)}")
        if self.precision not in PRECISIONS:
            raise MllmError(
                f"{where}: field precision: {self.precision!r} is not one of {', '.join(PRECISIONS)}"
            )
        if self.stage != "clip" and (self.model is None) == (self.init_from is None):
            raise MllmError(
                f"{where}: set exactly one of `model` (a model YAML) and `init_from` (a checkpoint)"
            )
        if self.init_from is not None:
            for name in ("vision_source", "projector"):
                if getattr(self, name) is not None:
                    raise MllmError(
                        f"{where}: field {name}: a checkpoint (init_from) brings its own vision tower and projector; "
                        f"{name} applies to a model YAML (`model`) only"
                    )
        if self.stage == "clip" and self.model is None:
            raise MllmError(f"{where}: field model: the clip stage needs a model YAML (its vision sizes)")
        if not self.data.train:
            raise MllmError(f"{where}: field data.train: no training data given")
        for name in ("micro_batch_size", "grad_accum", "max_steps", "log_every"):
            if getattr(self, name) < 1:
                raise MllmError(f"{where}: field {name}: must be at least 1, got {getattr(self, name)}")
        if self.save_every < 0 or self.eval_every < 0:
            raise MllmError(f"{where}: fields save_every and eval_every must be 0 or more")
        if self.text_anchor < 0:
            raise MllmError(f"{where}: field text_anchor: must be 0 or more, got {self.text_anchor}")
        if self.text_anchor > 0 and self.llm not in ("lora", "qlora4", "qlora8"):
            raise MllmError(
                f"{where}: field text_anchor: the base distributions come from switching the LoRA adapter off, "
                f"so it needs llm: lora, qlora4 or qlora8 (got {self.llm!r})"
            )
        if len(self.optim.betas) != 2:
            raise MllmError(f"{where}: field optim.betas: expected two numbers")
        if self.clip.image_heads not in IMAGE_HEADS:
            raise MllmError(
                f"{where}: field clip.image_heads: {self.clip.image_heads!r} is not one of {', '.join(IMAGE_HEADS)}"
            )
        keys = self.clip.object_count_keys
        if not keys or len(set(keys)) != len(keys) or not set(keys) <= set(OBJECT_COUNT_KEYS):
            raise MllmError(
                f"{where}: field clip.object_count_keys: {keys!r}: expected some of {', '.join(OBJECT_COUNT_KEYS)}, "
                "each once"
            )
        if not 0 <= self.clip.recolor_prob <= 1:
            raise MllmError(
                f"{where}: field clip.recolor_prob: must be in [0, 1], got {self.clip.recolor_prob}"
            )
        if not 0 <= self.clip.recolor_until <= 1:
            raise MllmError(
                f"{where}: field clip.recolor_until: must be in [0, 1], got {self.clip.recolor_until}"
            )


def parse_override(text: str) -> tuple[list[str], Any]:
    """`optim.lr=1e-4` -> (['optim', 'lr'], 0.0001); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise MllmError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=1e-4")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise MllmError(f"override {text!r}: value is not valid YAML ({exc})") from None
    if isinstance(parsed, str) and _FLOAT.fullmatch(parsed.strip()):  # YAML 1.1 reads 5e-4 as text
        parsed = float(parsed)
    return key.strip().split("."), parsed


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set each dotted key of `overrides` in the nested dict `data` (creating sections as needed)."""
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise MllmError(f"override {text!r}: {key} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a training YAML, apply `key=value` overrides and check the result."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise MllmError(f"{path}: training config not found") from None
    except yaml.YAMLError as exc:
        raise MllmError(f"{path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise MllmError(f"{path}: expected a mapping of settings")
    config = from_dict(TrainConfig, apply_overrides(data, overrides or []), str(path))
    config.check(str(path))
    return config


def config_dict(config: TrainConfig) -> dict[str, Any]:
    """Plain-dict form (the resolved config written into run and checkpoint folders)."""
    return to_dict(config)


def save_train_config(config: TrainConfig, path: str | Path) -> None:
    """Write the resolved config as YAML."""
    Path(path).write_text(yaml.safe_dump(config_dict(config), sort_keys=False))
