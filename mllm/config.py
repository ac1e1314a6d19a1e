"""Typed configuration of a multimodal model (vision tower, projector, LLM, LoRA), loaded from and saved to YAML.

Unknown keys and wrong types are refused with an error naming the file and the field. Sources that start
with `./` or `../` are local paths resolved relative to the YAML file that names them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar, Union

import yaml

from mllm.errors import MllmError

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
FEATURE_SELECT = ("default", "full")  # VisionConfig.feature_select: drop or keep the class token


@dataclass
class VisionConfig:
    """Frozen vision tower. `source` is a hub id or local folder; None builds a random tower from the sizes."""

    type: str = "clip"  # registry name: clip | siglip
    source: str | None = None
    feature_layer: int = -2
    # which tokens of that layer the projector gets (transformers' `vision_feature_select_strategy`): "default"
    # drops CLIP's class token, "full" keeps it first (an image-level token); the same for towers without one
    feature_select: str = "default"
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    intermediate_size: int = 3072
    image_mean: list[float] = field(default_factory=lambda: list(CLIP_MEAN))
    image_std: list[float] = field(default_factory=lambda: list(CLIP_STD))
    init_seed: int = 0


@dataclass
class ProjectorConfig:
    """Trainable bridge from vision features [B, P, Dv] to LLM embeddings [B, N, Dl]."""

    type: str = "mlp2x_gelu"  # registry name: linear | mlp2x_gelu | qformer
    num_query_tokens: int = 32  # qformer only: N learned queries
    qformer_hidden_size: int = 256
    qformer_num_layers: int = 2
    qformer_num_heads: int = 4
    class_tokens: int = 1  # > 1: the class token (feature_select: full) becomes this many tokens, its own MLP
    pool_tokens: int = 0  # > 0: this many tokens of the mean patch feature come first, their own MLP
    init_seed: int = 0


@dataclass
class LLMConfig:
    """Causal LM: a shipped name (`smollm2`), hub id, local folder or GGUF file; or random init from `init_config`."""

    source: str | None = "smollm2"
    gguf_file: str | None = None
    init_config: dict[str, Any] | None = None  # transformers config kwargs incl. model_type, for random init
    init_seed: int = 0
    tokenizer: str | None = None  # tokenizer source when it differs from `source` (required for random init)
    chat_template: str | None = None  # registry name; None uses the tokenizer's own template
    dtype: str = "float32"
    load_in_4bit: bool = False
    load_in_8bit: bool = False
    image_token: str = "<image>"
    max_length: int | None = None  # context length; None reads it from the model config


@dataclass
class LoRAConfig:
    """peft LoRA settings; `target_modules` is `all-linear` (every linear layer but the head) or a list."""

    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    init_seed: int = 0


@dataclass
class ModelConfig:
    """The whole multimodal model."""

    name: str = "mllm"
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)
    system_prompt: str | None = None
    max_images: int = 4  # images one conversation may carry
    # rotary positions from one token of an image to the next (mllm.positions): 1 as LLaVA, 0 for one position
    # per image, k > 1 to set them k apart
    image_position_step: int = 1


T = TypeVar("T")


def _type_ok(value: Any, annotation: Any) -> bool:
    """Loose structural type check of a YAML value against a dataclass field annotation."""
    origin = typing.get_origin(annotation)
    if annotation is Any:
        return True
    if origin in (Union, types.UnionType):
        return any(_type_ok(value, arg) for arg in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(annotation)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass `cls` from a plain dict, checking keys and types; `where` prefixes error messages."""
    if not isinstance(data, dict):
        raise MllmError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise MllmError(f"{where}: unknown field(s) {', '.join(unknown)}; valid: {', '.join(sorted(names))}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        annotation = hints[key]
        optional = [a for a in typing.get_args(annotation) if dataclasses.is_dataclass(a)]
        if optional and value is not None:  # `SomeConfig | None` given a mapping
            kwargs[key] = from_dict(optional[0], value, f"{where}: {key}")
        elif dataclasses.is_dataclass(annotation):
            kwargs[key] = from_dict(annotation, value or {}, f"{where}: {key}")
        elif not _type_ok(value, annotation):
            shown = getattr(annotation, "__name__", str(annotation))
            raise MllmError(f"{where}: field {key}: expected {shown}, got {value!r}")
        else:
            kwargs[key] = value
    return cls(**kwargs)


def to_dict(config: Any) -> dict[str, Any]:
    """Plain-dict form of a config dataclass (for YAML/JSON)."""
    return dataclasses.asdict(config)


def _resolve_local(source: str | None, base: Path) -> str | None:
    if source is not None and (source.startswith("./") or source.startswith("../")):
        return str((base / source).resolve())
    return source


def resolve_paths(config: ModelConfig, base: Path) -> ModelConfig:
    """Resolve `./`- and `../`-relative sources against folder `base`."""
    config.vision.source = _resolve_local(config.vision.source, base)
    config.llm.source = _resolve_local(config.llm.source, base)
    config.llm.tokenizer = _resolve_local(config.llm.tokenizer, base)
    return config


def load_model_config(path: str | Path) -> ModelConfig:
    """Read a model YAML file into a ModelConfig."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise MllmError(f"{path}: model config not found") from None
    except yaml.YAMLError as exc:
        raise MllmError(f"{path}: invalid YAML: {exc}") from None
    config = from_dict(ModelConfig, data or {}, str(path))
    if config.vision.feature_select not in FEATURE_SELECT:
        raise MllmError(
            f"{path}: vision: field feature_select: {config.vision.feature_select!r} is not one of "
            f"{', '.join(FEATURE_SELECT)}"
        )
    if config.image_position_step < 0:
        raise MllmError(f"{path}: field image_position_step: {config.image_position_step} is negative")
    if config.projector.class_tokens < 1:
        raise MllmError(
            f"{path}: projector: field class_tokens: {config.projector.class_tokens}: expected 1 or more"
        )
    if config.projector.pool_tokens < 0:
        raise MllmError(
            f"{path}: projector: field pool_tokens: {config.projector.pool_tokens}: expected 0 or more"
        )
    if config.projector.class_tokens > 1 and config.vision.feature_select != "full":
        raise MllmError(
            f"{path}: projector: field class_tokens: {config.projector.class_tokens} needs the class token among "
            "the features (vision: feature_select: full)"
        )
    return resolve_paths(config, path.parent)


def save_model_config(config: ModelConfig, path: str | Path) -> None:
    """Write a ModelConfig as YAML."""
    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False))
