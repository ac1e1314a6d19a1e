"""Inference precision of the LLM's linear layers, picked by exact name:

- `fp32`: the weights as loaded; greedy output identical to transformers' generate.
- `fp16`: every `nn.Linear` of the (LoRA-merged) LLM keeps its weights in fp16 and computes in fp32
  (`torch.ao.quantization.quantize_dynamic` with dtype float16, fbgemm's fp16 GEMM). Decoding a token reads
  half the weight bytes, and on a CPU reading the weights is what bounds decode speed. Activations are not
  quantized, so on CPUs with AVX-512 each row of a batch is computed on its own (batched answers equal single
  ones; fbgemm's AVX2 kernels round a row by the matrix height: mllm.fp16_linear.rows_exact); the only
  change is rounding the weights to fp16 (about 3 decimal digits, where bf16 keeps 2).
- `int8`: the same layers as torch's dynamically quantized int8 Linear (int8 weights with one scale per output
  channel, activations quantized per call): a quarter of the weight bytes, but the activation scale is shared
  by a whole batch, so batched answers can differ from single ones, and replies differ more from fp32. On
  the 135M assistant it costs too much (release7, the default before release32: 77.5% on the shapes test split
  against 91.2% at fp16, batch 1), so it is opt-in and logs a warning; larger LLMs tolerate activation
  quantization better.
- `bf16`: the decoder layers' linear layers on oneDNN's prepacked bf16 kernels (mllm.bf16_linear): inputs and
  outputs of each matmul are rounded to bf16, the residual stream stays fp32. On CPUs with AMX tiles a prompt's
  prefill and a batch's steps run several times faster than at fp16; a single decode step reads the same bytes.
  The LM head stays at fp16 weights with fp32 logits (bf16 logits would tie near the top and flip greedy
  choices). Batched answers can differ from single ones in rare near-ties (oneDNN splits some reductions
  across threads depending on the matrix height; mllm.llama_rows); fp16 keeps them identical.
- `auto`: `bf16` on a CPU with AMX tiles, else `fp16` where fbgemm's kernels exist (a CPU LLM in fp32), else
  `fp32`. For batch work (`batches=True`: `mllm vqa`, evaluation) `auto` is also `bf16` on CPUs with AVX-512
  BF16 but no AMX, where bf16 runs prompts and batches about 1.8x faster than fp16 but decodes a single reply
  about 25% slower (SmolLM2-135M on a 2-core AMD EPYC: 36 against 48 tokens/s), so chat keeps fp16 there.

On a GPU (a model loaded with `device` cuda), `fp16` and `bf16` are the whole LLM cast to that dtype, as
transformers runs it (`auto`: bf16 where the GPU has it, else fp16); `int8` is refused there (use bitsandbytes'
8-bit loading). On a CPU the input embedding stays fp32. Reduced precision can change replies, so its accuracy
is checked against fp32 (tests/test_smollm2.py and the release evaluation on the shapes test split).
Only for a model that is not trained again: quantized modules have no gradients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import torch
from torch import nn

from mllm.bf16_linear import PackedBf16Linear, amx_available, bf16_kernels_available, native_bf16_available
from mllm.errors import MllmError
from mllm.fp16_linear import SLICE_ROWS, SlicedFp16Linear
from mllm.model import MultimodalModel
from mllm.registry import Registry

log = logging.getLogger(__name__)
PRECISIONS: Registry[Callable[[MultimodalModel], MultimodalModel]] = Registry("inference precision")


def _plain_llm(model: MultimodalModel, device_type: str) -> bool:
    """An LLM on a `device_type` device (cpu, cuda) with plain fp32 weights (no bitsandbytes)."""
    llm_config = model.config.llm
    return (
        model.device.type == device_type
        and not (llm_config.load_in_4bit or llm_config.load_in_8bit)
        and all(p.dtype == torch.float32 for p in model.llm.parameters())
    )


def _cast_on_gpu(model: MultimodalModel, dtype: torch.dtype) -> MultimodalModel:
    """The GPU LLM's weights cast to `dtype` (the vision tower and projector stay fp32; their output is cast
    to the LLM's embedding dtype where it is merged)."""
    name = {torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    if not _plain_llm(model, "cuda"):
        raise MllmError(f"precision {name} on a GPU needs an fp32 LLM (not --load-4bit/--load-8bit)")
    if dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        raise MllmError(f"precision bf16: {torch.cuda.get_device_name(model.device)} has no bf16; use fp16")
    model.llm.to(dtype)
    log.info("LLM weights at %s on %s", name, model.device)
    return model


def quantized_supported(model: MultimodalModel) -> bool:
    """Whether `fp16`/`int8` can run: a plain fp32 CPU LLM and an x86/fbgemm quantized engine."""
    engines = torch.backends.quantized.supported_engines
    return _plain_llm(model, "cpu") and any(engine in engines for engine in ("x86", "fbgemm"))


def bf16_supported(model: MultimodalModel) -> bool:
    """Whether `bf16` can run: a plain fp32 CPU LLM, oneDNN's bf16 kernels and fbgemm (for the LM head)."""
    return quantized_supported(model) and bf16_kernels_available()


@PRECISIONS.register("fp32")
def _keep(model: MultimodalModel) -> MultimodalModel:
    return model


def _check_convertible(model: MultimodalModel, name: str, supported: bool, kernels: str) -> None:
    if not supported:
        raise MllmError(
            f"precision {name} needs an fp32 LLM on a CPU with {kernels} "
            "(not --load-4bit/--load-8bit); use precision fp32"
        )
    if any(module_name.endswith("lora_A") for module_name, _ in model.llm.named_modules()):
        raise MllmError(f"precision {name} needs the LoRA adapters merged first (merge_for_inference)")


def _convert(model: MultimodalModel, convert_block: Callable[[nn.Module], object]) -> None:
    """`convert_block` on each entry of the LLM's ModuleLists (the decoder layers), then on the whole LLM (the
    rest: the LM head), in place: a block's fp32 weights are released before the next is converted, and a
    weight file's memory map (one shard of mllm.llm's cache) is unmapped once every tensor in it is replaced."""
    blocks = [block for child in model.llm.modules() if isinstance(child, nn.ModuleList) for block in child]
    owned: set[int] = set()
    for block in [*blocks, model.llm]:
        # the weights that stay fp32 get memory of their own first: a tied LM head is then converted from the
        # embedding's copy, once its file map is gone, not while both are resident (`mllm serve` of the shipped
        # assistant at fp16 peaked at 1,243 MB while loading; 1,211 with this; 1,147 with the head also packed in
        # slices, mllm.fp16_linear)
        _own_memory(
            [p for m in block.modules() if type(m) is not nn.Linear for p in m.parameters(False)], owned
        )
        convert_block(block)
        _own_memory(block.parameters(), owned)


def _replace_linears(
    module: nn.Module,
    build: Callable[[nn.Linear], nn.Module],
    wanted: Callable[[nn.Linear], bool] = lambda linear: True,
) -> None:
    """Replace every plain `nn.Linear` under `module` that is `wanted` (in place, recursively) by `build(it)`."""
    for child in list(module.modules()):
        for name, grandchild in list(child.named_children()):
            if type(grandchild) is nn.Linear and wanted(grandchild):
                setattr(child, name, build(grandchild))


def _quantize_dynamic(module: nn.Module, dtype: torch.dtype) -> None:
    """Every nn.Linear under `module` to torch's dynamic quantized Linear of `dtype`; at fp16 a wide one (the LM
    head) is packed in slices instead (mllm.fp16_linear: the same logits with a smaller peak while packing)."""
    from torch.ao.quantization import float16_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    if dtype == torch.float16:
        _replace_linears(module, SlicedFp16Linear, lambda linear: linear.out_features > SLICE_ROWS)

    qconfig = float16_dynamic_qconfig if dtype == torch.float16 else per_channel_dynamic_qconfig
    quantize_dynamic(module, {nn.Linear: qconfig}, dtype=dtype, inplace=True)


def _dynamic(model: MultimodalModel, dtype: torch.dtype) -> MultimodalModel:
    name = "fp16" if dtype == torch.float16 else "int8"
    _check_convertible(model, name, quantized_supported(model), "torch's x86/fbgemm kernels")
    _convert(model, lambda block: _quantize_dynamic(block, dtype))
    log.info("LLM linear layers at %s (dynamic quantization, fp32 activations in, fp32 out)", name)
    return model


@PRECISIONS.register("bf16")
def _bf16(model: MultimodalModel) -> MultimodalModel:
    if model.device.type == "cuda":
        return _cast_on_gpu(model, torch.bfloat16)
    _check_convertible(model, "bf16", bf16_supported(model), "oneDNN's bf16 and fbgemm's fp16 kernels")
    llm = model.llm

    def convert(block: nn.Module) -> None:
        if block is llm:  # what is left after the decoder layers: the LM head, at fp16 weights (fp32 logits)
            _quantize_dynamic(block, torch.float16)
        else:
            _replace_linears(block, PackedBf16Linear)

    _convert(model, convert)
    log.info("LLM decoder layers at bf16 (oneDNN prepacked), LM head at fp16 weights")
    return model


def _own_memory(parameters: Iterable[nn.Parameter], owned: set[int]) -> None:
    """Copy parameters that stay fp32 (embedding, norms) into memory of their own, skipping those in `owned`
    (ids of parameters copied already). Weights loaded from safetensors live in a memory map of their file,
    which stays mapped, with every page the LoRA merge wrote, while any tensor in it is alive: without the
    copies the replaced fp32 weights would stay resident (about 400 MB for SmolLM2-135M)."""
    with torch.no_grad():
        for param in parameters:
            if id(param) not in owned:
                param.data = param.data.clone()
                owned.add(id(param))


@PRECISIONS.register("fp16")
def _fp16(model: MultimodalModel) -> MultimodalModel:
    if model.device.type == "cuda":
        return _cast_on_gpu(model, torch.float16)
    return _dynamic(model, torch.float16)


@PRECISIONS.register("int8")
def _int8(model: MultimodalModel) -> MultimodalModel:
    if model.device.type == "cuda":
        raise MllmError("precision int8 runs on a CPU; on a GPU load the LLM in 8-bit (--load-8bit) instead")
    log.warning(
        "precision int8 quantizes activations too: answers can change a lot (an earlier shipped assistant "
        "dropped from 91.2% to 77.5% on the shapes test split); fp16 keeps them"
    )
    return _dynamic(model, torch.qint8)


def resolve_precision(model: MultimodalModel, precision: str, batches: bool = False) -> str:
    """`auto` -> `bf16`, `fp16` or `fp32` for this model, for batch work when `batches` (see the module
    docstring); other names are checked against the registry."""
    if precision == "auto":
        if _plain_llm(model, "cuda"):
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if bf16_supported(model) and (amx_available() or (batches and native_bf16_available())):
            return "bf16"
        return "fp16" if quantized_supported(model) else "fp32"
    PRECISIONS.get(precision)
    return precision


def apply_precision(model: MultimodalModel, precision: str, batches: bool = False) -> MultimodalModel:
    """The model with its LLM at inference `precision` (see the module docstring; `batches`: the model will
    mostly answer many prompts at once); records it on the model."""
    name = resolve_precision(model, precision, batches)
    model = PRECISIONS.get(name)(model)
    model.inference_precision = name
    return model
