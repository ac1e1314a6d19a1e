"""Config and registries: YAML round trip, unknown fields and wrong types named with the file, unknown
component names listing the valid ones."""

from __future__ import annotations

import pytest

from mllm.config import ModelConfig, load_model_config, save_model_config
from mllm.errors import MllmError
from mllm.projectors import PROJECTORS
from mllm.vision import VISION_FAMILIES


def test_yaml_round_trip(tiny_config, tmp_path):
    save_model_config(tiny_config, tmp_path / "m.yaml")
    assert load_model_config(tmp_path / "m.yaml") == tiny_config


def test_shipped_configs_load(tiny_config_path):
    for path in tiny_config_path.parent.glob("*.yaml"):
        assert isinstance(load_model_config(path), ModelConfig)


def test_unknown_field_and_wrong_type(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("llm:\n  sorce: x\n")
    with pytest.raises(MllmError, match=r"bad.yaml: llm: unknown field\(s\) sorce"):
        load_model_config(path)
    path.write_text("projector:\n  num_query_tokens: many\n")
    with pytest.raises(
        MllmError, match="bad.yaml: projector: field num_query_tokens: expected int, got 'many'"
    ):
        load_model_config(path)
    path.write_text("vision:\n  feature_select: cls\n")
    with pytest.raises(
        MllmError, match="bad.yaml: vision: field feature_select: 'cls' is not one of default, full"
    ):
        load_model_config(path)
    path.write_text("projector:\n  class_tokens: 0\n")
    with pytest.raises(MllmError, match="bad.yaml: projector: field class_tokens: 0: expected 1 or more"):
        load_model_config(path)
    path.write_text("projector:\n  pool_tokens: -1\n")
    with pytest.raises(MllmError, match="bad.yaml: projector: field pool_tokens: -1: expected 0 or more"):
        load_model_config(path)
    path.write_text("projector:\n  class_tokens: 4\n")
    with pytest.raises(MllmError, match="bad.yaml: projector: field class_tokens: 4 needs the class token"):
        load_model_config(path)
    path.write_text("llm: [unclosed\n")
    with pytest.raises(MllmError, match="bad.yaml: invalid YAML"):
        load_model_config(path)


def test_relative_sources_resolve_against_the_yaml(tmp_path):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "m.yaml"
    path.write_text("vision:\n  source: ./tower\nllm:\n  source: smollm2\n")
    config = load_model_config(path)
    assert config.vision.source == str(tmp_path / "sub" / "tower")
    assert config.llm.source == "smollm2"


def test_unknown_names_list_valid_ones():
    with pytest.raises(MllmError, match="unknown projector 'mlp3'; valid names: linear, mlp2x_gelu, qformer"):
        PROJECTORS.get("mlp3")
    with pytest.raises(MllmError, match="valid names: clip, siglip"):
        VISION_FAMILIES.get("vit")
