"""`mllm export`: write a model as a transformers LLaVA folder (`hf-llava`) or as a merged mllm checkpoint.

hf-llava: LoRA merged into the LLM, then a `LlavaForConditionalGeneration` (config, safetensors) plus a
`LlavaProcessor` (image processor, tokenizer holding the image token, chat template) that load with
transformers alone and give mllm's logits. How the parts map:
- vision tower: copied as is; `vision_feature_layer` = mllm's feature layer; strategy "default" drops CLIP's
  CLS token as mllm does, "full" keeps it (`feature_select: full`) or has none to drop (SigLIP);
- projector: `mlp2x_gelu` is LLaVA's projector (fc1 -> linear_1, GELU, fc2 -> linear_2); `linear` becomes
  linear_1 = the projection, act = identity ("linear"), linear_2 = an identity matrix with zero bias (exact);
  `qformer` has no LLaVA equivalent and is refused;
- positions: LLaVA gives image tokens consecutive positions. A model with another `image_position_step` is
  exported with the step in its config (`image_position_step`, which transformers keeps but does not read) and
  `mllm_positions.py` (a copy of mllm/positions.py, torch only) in the folder: `generate(**inputs,
  position_ids=image_position_ids(...))` then gives mllm's tokens (transformers extends given position ids by
  one per new token); without them the model sees other positions than it was trained with. The export warns;
  USAGE.md in the folder shows the call;
- image token: mllm's `<image>` id is len(tokenizer) - 1, which may be past the LLM's vocabulary (mllm
  never looks it up). The export resizes the embeddings (and head) to hold it; the new row is zero and the
  generation config suppresses the token, so it is never generated. Logits gain that one extra column.
- preprocessing: pad to square with the mean colour, resize to the tower's size (bicubic), normalize; the
  padding colour may differ from mllm's by 1/255 (transformers truncates the mean colour, mllm rounds it).
- chat template: the tokenizer's own, behind a preamble that turns list content (`{"type": "image"}` /
  `{"type": "text"}` parts) into mllm's text form (one `<image>` line per image) and adds mllm's system prompt.

merged: an mllm checkpoint whose `llm/` holds the LLM with LoRA merged (save_checkpoint(save_llm=True)).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from peft import PeftModel
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaImageProcessorPil, LlavaProcessor

from mllm import positions
from mllm.assistant import load_model, merge_for_inference, resolve_model
from mllm.checkpoint import read_meta, save_checkpoint
from mllm.errors import MllmError
from mllm.model import MultimodalModel
from mllm.projectors import LinearProjector, MLPProjector

log = logging.getLogger(__name__)
FORMATS = ("hf-llava", "merged")
POSITIONS_MODULE = "mllm_positions.py"
POSITIONS_USAGE = "USAGE.md"


def positions_usage(step: int) -> str:
    """USAGE.md of an hf-llava folder whose image tokens are `step` positions apart (not LLaVA's 1)."""
    return f"""# Image token positions

This model was trained with its image tokens {step} rotary positions apart (mllm's `image_position_step: {step}`),
not one apart as transformers' LLaVA lays them out. Give `generate` (or `forward`) the position ids from
`mllm_positions.py` (in this folder; needs only torch), or the answers change:

```python
import sys
from PIL import Image
from transformers import AutoProcessor, LlavaForConditionalGeneration

folder = "path/to/this/folder"
sys.path.insert(0, folder)
from mllm_positions import image_position_ids

model = LlavaForConditionalGeneration.from_pretrained(folder)
processor = AutoProcessor.from_pretrained(folder)
messages = [{{"role": "user", "content": [{{"type": "image"}}, {{"type": "text", "text": "What is in the image?"}}]}}]
text = processor.apply_chat_template(messages, add_generation_prompt=True)
inputs = processor(images=[Image.open("photo.png")], text=text, return_tensors="pt")
positions = image_position_ids(
    inputs["input_ids"],
    model.config.image_token_id,
    model.config.image_seq_length,
    model.config.image_position_step,
    inputs["attention_mask"],
)
output = model.generate(**inputs, position_ids=positions, max_new_tokens=64, do_sample=False)
print(processor.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

transformers extends the given position ids by one for every new token, as mllm does.
"""


def processor_chat_template(tokenizer_template: str, image_token: str, system_prompt: str | None) -> str:
    """The tokenizer's chat template behind a preamble that flattens list content into mllm's text form."""
    system = ""
    if system_prompt:
        system = (
            "{%- if not ns.msgs or ns.msgs[0]['role'] != 'system' -%}"
            f"{{%- set ns.msgs = [{{'role': 'system', 'content': {json.dumps(system_prompt)}}}] + ns.msgs -%}}"
            "{%- endif -%}"
        )
    preamble = (
        "{%- set ns = namespace(msgs=[]) -%}"
        "{%- for m in messages -%}"
        "{%- if m['content'] is string -%}{%- set ns.msgs = ns.msgs + [m] -%}"
        "{%- else -%}{%- set part = namespace(images='', text='') -%}"
        "{%- for p in m['content'] -%}"
        f"{{%- if p['type'] == 'image' -%}}{{%- set part.images = part.images + {json.dumps(image_token + chr(10))} -%}}"
        "{%- elif p['type'] == 'text' -%}{%- set part.text = part.text + p['text'] -%}{%- endif -%}"
        "{%- endfor -%}"
        "{%- set ns.msgs = ns.msgs + [{'role': m['role'], 'content': part.images + part.text}] -%}"
        "{%- endif -%}{%- endfor -%}" + system + "{%- set messages = ns.msgs -%}"
    )
    return preamble + tokenizer_template


def _projector_weights(model: MultimodalModel, llava: LlavaForConditionalGeneration) -> None:
    target = llava.model.multi_modal_projector
    projector = model.projector
    with torch.no_grad():
        if isinstance(projector, MLPProjector):
            target.linear_1.load_state_dict(projector.fc1.state_dict())
            target.linear_2.load_state_dict(projector.fc2.state_dict())
        elif isinstance(projector, LinearProjector):
            target.linear_1.load_state_dict(projector.proj.state_dict())
            target.linear_2.weight.copy_(torch.eye(target.linear_2.weight.shape[0]))
            target.linear_2.bias.zero_()


def build_llava(model: MultimodalModel) -> tuple[LlavaForConditionalGeneration, LlavaProcessor]:
    """A transformers LLaVA model and processor equal to `model` (LoRA must be merged first)."""
    ptype = model.config.projector.type
    if ptype not in ("linear", "mlp2x_gelu"):
        raise MllmError(
            f"projector {ptype!r} has no transformers LLaVA equivalent; hf-llava export supports "
            "linear and mlp2x_gelu (use --format merged)"
        )
    if model.config.projector.class_tokens > 1:
        raise MllmError(
            f"projector class_tokens {model.config.projector.class_tokens}: transformers' LLaVA maps every vision "
            "feature to one token, so a class token made into several has no equivalent (use --format merged)"
        )
    if model.config.projector.pool_tokens > 0:
        raise MllmError(
            f"projector pool_tokens {model.config.projector.pool_tokens}: transformers' LLaVA maps every vision "
            "feature to one token, so tokens of the mean patch feature have no equivalent (use --format merged)"
        )
    if isinstance(model.llm, PeftModel):
        raise ValueError("merge the LoRA adapters first (mllm.assistant.merge_for_inference)")
    tokenizer = model.tokenizer
    llm = model.llm
    image_token_id = model.image_token_id
    old_vocab = llm.get_input_embeddings().weight.shape[0]
    if image_token_id >= old_vocab:
        llm.resize_token_embeddings(image_token_id + 1, mean_resizing=False)
        with torch.no_grad():
            llm.get_input_embeddings().weight[old_vocab:] = 0
            if llm.get_output_embeddings() is not None:
                llm.get_output_embeddings().weight[old_vocab:] = 0
    step = model.config.image_position_step
    positions_config = {"image_position_step": step} if step != 1 else {}  # LLaVA's own layout needs no key
    vision_model = model.vision.model
    has_cls = model.vision.family.has_cls_token
    config = LlavaConfig(
        vision_config=vision_model.config.to_dict(),
        text_config=llm.config.to_dict(),
        image_token_index=image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act="gelu" if ptype == "mlp2x_gelu" else "linear",
        vision_feature_select_strategy="default" if model.vision.drop_cls else "full",
        vision_feature_layer=model.config.vision.feature_layer,
        multimodal_projector_bias=True,
        **positions_config,
    )
    dtype = llm.get_input_embeddings().weight.dtype
    llava = LlavaForConditionalGeneration(config).to(dtype).eval()
    with torch.no_grad():
        llava.model.vision_tower.load_state_dict(vision_model.state_dict())
        llava.model.language_model.load_state_dict(llm.get_decoder().state_dict())
        llava.lm_head.weight.copy_(llm.get_output_embeddings().weight)
    _projector_weights(model, llava)
    llava.generation_config = llm.generation_config
    llava.generation_config.suppress_tokens = [image_token_id]
    if llava.generation_config.pad_token_id is None:
        llava.generation_config.pad_token_id = tokenizer.pad_token_id

    vision = model.config.vision
    image_processor = LlavaImageProcessorPil(
        do_pad=True,
        do_resize=True,
        size={"height": vision.image_size, "width": vision.image_size},
        do_center_crop=False,
        crop_size={"height": vision.image_size, "width": vision.image_size},
        resample=3,
        image_mean=list(vision.image_mean),
        image_std=list(vision.image_std),
        do_rescale=True,
        rescale_factor=1 / 255,
        do_normalize=True,
        do_convert_rgb=True,
    )
    template = processor_chat_template(
        tokenizer.chat_template, model.config.llm.image_token, model.config.system_prompt
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=vision_model.config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        chat_template=template,
        image_token=model.config.llm.image_token,
        num_additional_image_tokens=1 if has_cls else 0,
    )
    return llava, processor


def _prepare_out(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise MllmError(f"{out}: exists and is not a folder (--out)")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise MllmError(f"{out}: folder is not empty; choose a new --out or pass --overwrite")


def _write_atomically(out: Path, write: Callable[[Path], None]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out.name}-", dir=out.parent))
    try:
        write(tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def export(spec: str, fmt: str, out: Path, overwrite: bool = False) -> Path:
    """Export the model named by `spec` (`default`, a checkpoint folder or a model YAML) as `fmt` into `out`."""
    if fmt not in FORMATS:
        raise MllmError(f"--format {fmt!r}: valid formats are {', '.join(FORMATS)}")
    _prepare_out(out, overwrite)
    source = resolve_model(spec)
    meta = read_meta(source) if source.is_dir() else {}
    model = merge_for_inference(load_model(spec), quantized_too=True).eval()
    if fmt == "merged":
        save_checkpoint(
            model,
            out,
            stage=meta.get("stage", "none"),
            step=int(meta.get("step", 0)),
            data={**meta.get("data", {}), "exported_from": str(source)},
            save_llm=True,
        )
        return out
    llava, processor = build_llava(model)
    step = model.config.image_position_step
    if step != 1:
        log.warning(
            "image_position_step %d: pass position_ids=mllm_positions.image_position_ids(...) to generate "
            "(see %s); without them transformers gives image tokens consecutive positions and the answers change",
            step,
            out / POSITIONS_USAGE,
        )

    def write(tmp: Path) -> None:
        llava.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        if step != 1:
            shutil.copyfile(positions.__file__, tmp / POSITIONS_MODULE)
            (tmp / POSITIONS_USAGE).write_text(positions_usage(step))
        (tmp / "mllm_export.json").write_text(
            json.dumps(
                {
                    "exported_from": str(source),
                    "mllm_name": model.config.name,
                    "projector": model.config.projector.type,
                    "image_token": model.config.llm.image_token,
                    "image_token_id": model.image_token_id,
                    "num_image_tokens": model.num_image_tokens,
                    "image_position_step": step,
                },
                indent=2,
            )
            + "\n"
        )

    _write_atomically(out, write)
    return out
