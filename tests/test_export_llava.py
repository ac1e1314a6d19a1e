"""`mllm export`: a tiny LoRA checkpoint (random, non-zero LoRA weights) exported as a transformers LLaVA
folder loads with transformers alone and matches mllm (prompt ids, pixels, logits within 1e-4, greedy
generation) for the linear and mlp2x_gelu projectors, and with the CLS token kept (`feature_select: full`); a merged export is an mllm checkpoint that loads and
gives the same logits; unsupported projectors and occupied folders are refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

import mllm
from mllm.checkpoint import read_meta, save_checkpoint
from mllm.config import load_model_config
from mllm.model import MultimodalModel
from serve.cli import main

TINY = Path(__file__).resolve().parent.parent / "configs" / "model" / "tiny-test.yaml"
QUESTION = "What is in the picture?"


def lora_checkpoint(folder: Path, projector: str, feature_select: str = "default") -> Path:
    """The tiny model with LoRA, every LLM (incl. LoRA) and projector weight redrawn, saved with its adapter."""
    config = load_model_config(TINY)
    config.lora.enabled = True
    config.projector.type = projector
    config.vision.feature_select = feature_select
    config.system_prompt = "You answer briefly."
    model = MultimodalModel.build(config)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for module in (model.llm, model.projector):
            for param in module.parameters():
                param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return save_checkpoint(model, folder, stage="finetune", step=7)


def picture(width: int = 32, height: int = 32) -> Image.Image:
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste(Image.new("RGB", (width // 2, height // 2), (0, 60, 250)), (width // 4, height // 4))
    return image


@pytest.mark.parametrize(
    ("projector", "feature_select"),
    [("mlp2x_gelu", "default"), ("linear", "default"), ("mlp2x_gelu", "full")],
)
def test_hf_llava_matches_mllm(
    projector: str, feature_select: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    checkpoint = lora_checkpoint(tmp_path / "ckpt", projector, feature_select)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(checkpoint), "--format", "hf-llava", "--out", str(out)]) == 0
    assert str(out) in capsys.readouterr().out
    assert {"config.json", "model.safetensors", "processor_config.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    hf_config = json.loads((out / "config.json").read_text())
    assert hf_config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in hf_config

    llava = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    assistant = mllm.load(str(checkpoint), precision="fp32")
    assert llava.config.image_token_id == assistant.model.image_token_id
    assert (
        llava.config.image_seq_length
        == assistant.model.num_image_tokens
        == (17 if feature_select == "full" else 16)
    )

    image = picture()
    ids, pixels = assistant.prepare([{"role": "user", "content": QUESTION}], [image])
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(images=[image], text=text, return_tensors="pt")
    assert inputs["input_ids"].tolist() == ids.tolist()  # same template, system prompt and image tokens
    assert torch.equal(inputs["pixel_values"], pixels)

    with torch.no_grad():
        ours = assistant.model(ids, pixel_values=pixels).logits
        theirs = llava(input_ids=ids, pixel_values=pixels).logits
    vocab = ours.shape[-1]
    assert theirs.shape[-1] == vocab + 1  # the image token's row
    assert (theirs[..., :vocab] - ours).abs().max().item() < 1e-4
    generated = llava.generate(**inputs, max_new_tokens=8, do_sample=False)
    reply = processor.batch_decode(generated[:, ids.shape[1] :], skip_special_tokens=True)[0]
    assert reply == assistant.chat([{"role": "user", "content": QUESTION}], [image], max_new_tokens=8)

    wide = picture(48, 24)  # padding to square: colours may differ by 1/255 from mllm's rounding
    _, wide_pixels = assistant.prepare([{"role": "user", "content": QUESTION}], [wide])
    hf_pixels = processor(images=[wide], text=text, return_tensors="pt")["pixel_values"]
    assert (hf_pixels - wide_pixels).abs().mean().item() < 0.05


def test_merged_checkpoint_runs(tmp_path: Path) -> None:
    checkpoint = lora_checkpoint(tmp_path / "ckpt", "mlp2x_gelu")
    out = tmp_path / "merged"
    assert main(["export", "--model", str(checkpoint), "--format", "merged", "--out", str(out)]) == 0
    meta = read_meta(out)
    assert meta["config"]["lora"]["enabled"] is False and meta["stage"] == "finetune" and meta["step"] == 7
    assert (out / "llm" / "model.safetensors").is_file() and not (out / "adapter").exists()
    original = mllm.load(str(checkpoint), precision="fp32")
    merged = mllm.load(str(out), precision="fp32")
    ids, pixels = original.prepare([{"role": "user", "content": QUESTION}], [picture()])
    with torch.no_grad():
        diff = original.model(ids, pixel_values=pixels).logits - merged.model(ids, pixel_values=pixels).logits
    assert diff.abs().max().item() < 1e-4
    message = [{"role": "user", "content": QUESTION}]
    assert merged.chat(message, [picture()], max_new_tokens=6) == original.chat(
        message, [picture()], max_new_tokens=6
    )


def test_refusals(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = TINY.read_text().replace("type: mlp2x_gelu", "type: qformer")
    qformer = tmp_path / "qformer.yaml"
    qformer.write_text(config)
    assert (
        main(["export", "--model", str(qformer), "--format", "hf-llava", "--out", str(tmp_path / "q")]) == 1
    )
    assert "qformer" in capsys.readouterr().err
    config = TINY.read_text().replace("type: mlp2x_gelu", "type: mlp2x_gelu\n  class_tokens: 4")
    classy = tmp_path / "classy.yaml"
    classy.write_text(config.replace("vision:\n", "vision:\n  feature_select: full\n", 1))
    assert main(["export", "--model", str(classy), "--format", "hf-llava", "--out", str(tmp_path / "c")]) == 1
    assert "class_tokens 4" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    pooled = tmp_path / "pooled.yaml"
    pooled.write_text(TINY.read_text().replace("type: mlp2x_gelu", "type: mlp2x_gelu\n  pool_tokens: 1"))
    assert main(["export", "--model", str(pooled), "--format", "hf-llava", "--out", str(tmp_path / "p")]) == 1
    assert "pool_tokens 1" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    assert main(["export", "--model", str(TINY), "--format", "merged", "--out", str(busy)]) == 1
    assert "not empty" in capsys.readouterr().err
    assert (busy / "keep.txt").is_file()
