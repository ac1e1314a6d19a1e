"""Model composition: the image-token count check, features landing exactly at the placeholders, projector
shapes, and gradients flowing only into the projector (and LoRA) — never the vision tower or the base LLM."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mllm.errors import MllmError
from mllm.model import MultimodalModel


def prompt_ids(model: MultimodalModel, images: int, text: str = "What is here?") -> torch.Tensor:
    content = "<image>" * images + text
    return torch.tensor([model.processor.encode_prompt([{"role": "user", "content": content}]).input_ids])


def test_wrong_placeholder_count_raises_with_both_numbers(tiny_model):
    ids = prompt_ids(tiny_model, 1)
    n = tiny_model.num_image_tokens
    with pytest.raises(MllmError, match=f"tokens {n}, features {2 * n}"):
        tiny_model.embed(ids, torch.randn(2, 3, 32, 32))
    with pytest.raises(MllmError, match=f"tokens {n}, features 0"):
        tiny_model.embed(ids, None)


def test_features_land_exactly_at_placeholders(tiny_model):
    ids = torch.cat([prompt_ids(tiny_model, 2), prompt_ids(tiny_model, 2, "Other question?")], dim=1)
    pixels = torch.randn(4, 3, 32, 32)
    merged = tiny_model.embed(ids, pixels)
    features = tiny_model.image_features(pixels).reshape(-1, merged.shape[-1])
    mask = ids[0] == tiny_model.image_token_id
    assert int(mask.sum()) == 4 * tiny_model.num_image_tokens
    torch.testing.assert_close(merged[0, mask], features)
    text_embeddings = tiny_model.llm.get_input_embeddings()(ids[0, ~mask])
    torch.testing.assert_close(merged[0, ~mask], text_embeddings)


@pytest.mark.parametrize("projector", ["linear", "mlp2x_gelu", "qformer"])
def test_projector_shapes_and_gradients(tiny_config, projector):
    tiny_config.projector.type = projector
    tiny_config.lora.enabled = True
    model = MultimodalModel.build(tiny_config)
    pixels = torch.randn(2, 3, 32, 32)
    features = model.vision(pixels)
    assert features.shape == (2, model.vision.num_patches, 32)  # CLS dropped: 16 patches
    projected = model.projector(features)
    expected_tokens = 8 if projector == "qformer" else model.vision.num_patches
    assert projected.shape == (2, expected_tokens, 32)
    assert model.num_image_tokens == expected_tokens

    record = {
        "id": "g",
        "image": ["a.png", "b.png"],
        "conversations": [
            {"from": "human", "value": "<image><image>Compare."},
            {"from": "gpt", "value": "Both red."},
        ],
    }
    encoded = model.processor.encode_llava(record)
    out = model(torch.tensor([encoded.input_ids]), pixel_values=pixels, labels=torch.tensor([encoded.labels]))
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith("projector.") or "lora_" in name:
            assert param.requires_grad, name
        else:
            assert not param.requires_grad and param.grad is None, name
    assert any(p.grad is not None for p in model.projector.parameters())
    lora_b = [p for n, p in model.llm.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.grad is not None for p in lora_b)


def test_vision_tower_stays_frozen_in_train_mode(tiny_model):
    tiny_model.train()
    assert not tiny_model.vision.training and not tiny_model.vision.model.training
    assert tiny_model.projector.training


def test_parameter_groups_report(tiny_model):
    groups = {g.name: g for g in tiny_model.parameter_groups()}
    assert groups["vision"].status == "frozen" and groups["llm"].status == "frozen"
    assert groups["projector"].status == "trainable" and groups["lora"].status == "trainable"
    tiny_model.set_trainable(projector=False, lora=False)
    assert all(g.trainable == 0 for g in tiny_model.parameter_groups())
    assert "projector  frozen" in tiny_model.describe_trainable()


def test_siglip_tower_from_a_local_folder(tiny_config, tmp_path):
    """A SigLIP vision model saved in HF format loads from its folder; it has no CLS token to drop."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    hf = SiglipVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
    )
    SiglipVisionModel(hf).save_pretrained(tmp_path / "siglip")
    tiny_config.vision.type = "siglip"
    tiny_config.vision.source = str(tmp_path / "siglip")
    model = MultimodalModel.build(tiny_config)
    assert model.vision.num_patches == 16 and model.num_image_tokens == 16
    assert model.vision(torch.randn(1, 3, 32, 32)).shape == (1, 16, 32)


def test_feature_select_full_keeps_the_class_token(tiny_config):
    """`feature_select: full` hands the projector the CLS token first, then the same patches as "default"."""
    pixels = torch.randn(2, 3, 32, 32)
    default = MultimodalModel.build(tiny_config)
    tiny_config.vision.feature_select = "full"
    full = MultimodalModel.build(tiny_config)
    assert full.vision.num_features == 17 and full.num_image_tokens == 17 and default.num_image_tokens == 16
    hidden = full.vision.model(pixels, output_hidden_states=True).hidden_states[
        tiny_config.vision.feature_layer
    ]
    features = full.vision(pixels)
    torch.testing.assert_close(features[:, 0], hidden[:, 0])
    torch.testing.assert_close(features[:, 1:], default.vision(pixels))
    encoded = full.processor.encode_llava(
        {
            "id": "f",
            "image": "a.png",
            "conversations": [{"from": "human", "value": "<image>Hi"}, {"from": "gpt", "value": "Yo"}],
        }
    )
    assert encoded.input_ids.count(full.image_token_id) == 17
    tiny_config.vision.feature_select = "cls"
    with pytest.raises(ValueError, match="feature_select 'cls'"):
        MultimodalModel.build(tiny_config)


def _check_head_trains_and_round_trips(
    model: MultimodalModel, head: torch.nn.Module, pixels: torch.Tensor, image_tokens: int, tmp_path: Path
) -> None:
    """A prompt gets `image_tokens` placeholders, the loss's gradient reaches `head`, and a checkpoint round
    trip keeps the logits."""
    from mllm.checkpoint import load_checkpoint, save_checkpoint

    ids = prompt_ids(model, 1)
    assert int((ids == model.image_token_id).sum()) == image_tokens
    model.set_trainable(projector=True, lora=False)
    labels = ids.masked_fill(ids == model.image_token_id, -100)
    model(input_ids=ids, pixel_values=pixels[:1], labels=labels).loss.backward()
    assert head[0].weight.grad.abs().sum() > 0
    save_checkpoint(model, tmp_path / "ckpt")
    again = load_checkpoint(tmp_path / "ckpt")
    with torch.no_grad():
        torch.testing.assert_close(
            again(input_ids=ids, pixel_values=pixels[:1]).logits,
            model(input_ids=ids, pixel_values=pixels[:1]).logits,
        )


def test_class_tokens_give_the_class_token_its_own_tokens(tiny_config, tmp_path):
    """`projector.class_tokens: 3` makes the class token three LLM tokens through its own MLP: the patches'
    tokens stay what the shared projector makes of them, prompts get 2 more placeholders, gradients reach the
    class head, and a checkpoint round trip keeps the logits; without a kept class token it is refused."""
    tiny_config.vision.feature_select = "full"
    plain = MultimodalModel.build(tiny_config)
    tiny_config.projector.class_tokens = 3
    model = MultimodalModel.build(tiny_config)
    assert model.num_image_tokens == 19 and plain.num_image_tokens == 17
    pixels = torch.randn(2, 3, 32, 32)
    out = model.image_features(pixels)
    assert out.shape == (2, 19, plain.image_features(pixels).shape[-1])
    features = model.vision(pixels)
    torch.testing.assert_close(out[:, 3:], model.projector.project(features[:, 1:]))
    assert not torch.allclose(out[:, 0], out[:, 1])
    _check_head_trains_and_round_trips(model, model.projector.class_head, pixels, 19, tmp_path)
    tiny_config.vision.feature_select = "default"
    with pytest.raises(MllmError, match="class_tokens: 3 needs the tower's class token"):
        MultimodalModel.build(tiny_config)
    tiny_config.vision.feature_select = "full"
    tiny_config.projector.type = "qformer"
    with pytest.raises(MllmError, match="class_tokens: 3 is for linear and mlp2x_gelu"):
        MultimodalModel.build(tiny_config)


def test_pool_tokens_carry_the_mean_patch_first(tiny_config, tmp_path):
    """`projector.pool_tokens: 2` puts two tokens of the mean patch feature (the class token left out) before the
    image's other tokens, through their own MLP: those tokens stay what the shared projector makes of them, the
    pooled ones move with the patches' mean, gradients reach the pool head, a checkpoint round trip keeps the
    logits, and the qformer refuses it."""
    tiny_config.vision.feature_select = "full"
    plain = MultimodalModel.build(tiny_config)
    tiny_config.projector.pool_tokens = 2
    model = MultimodalModel.build(tiny_config)
    assert model.num_image_tokens == plain.num_image_tokens + 2 == 19
    pixels = torch.randn(2, 3, 32, 32)
    out = model.image_features(pixels)
    features = model.vision(pixels)
    torch.testing.assert_close(out[:, 2:], model.projector.project(features))
    pooled = model.projector.pool_head(features[:, 1:].mean(dim=1)).view(2, 2, -1)
    torch.testing.assert_close(out[:, :2], pooled)
    assert not torch.allclose(out[0, 0], out[1, 0]) and not torch.allclose(out[0, 0], out[0, 1])
    _check_head_trains_and_round_trips(model, model.projector.pool_head, pixels, 19, tmp_path)
    tiny_config.vision.feature_select = "default"  # no class token: every feature is a patch
    model = MultimodalModel.build(tiny_config)
    features = model.vision(pixels)
    torch.testing.assert_close(
        model.image_features(pixels)[:, :2], model.projector.pool_head(features.mean(dim=1)).view(2, 2, -1)
    )
    tiny_config.projector.type = "qformer"
    with pytest.raises(MllmError, match="pool_tokens: 2 is for linear and mlp2x_gelu"):
        MultimodalModel.build(tiny_config)
