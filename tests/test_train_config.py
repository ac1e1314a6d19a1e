"""Training configs: typed loading with overrides, errors naming the file and field, the DeepSpeed config
filled from the training config, the learning-rate schedule, and the resumable batch order."""

from __future__ import annotations

from pathlib import Path

import pytest

from mllm.errors import MllmError
from train.config import load_train_config
from train.engine import cosine_lambda, deepspeed_config
from train.sampler import BatchStream, DataPosition, epoch_batches

REPO = Path(__file__).resolve().parent.parent


def test_shipped_configs_load() -> None:
    for path in sorted((REPO / "configs" / "train").glob("*.yaml")):
        config = load_train_config(path)
        assert config.stage in ("clip", "align", "instruct"), path


def test_overrides_and_errors(tmp_path: Path) -> None:
    path = REPO / "configs" / "train" / "tiny-align.yaml"
    config = load_train_config(path, ["optim.lr=5e-4", "max_steps=3", "data.max_records=10"])
    assert (config.optim.lr, config.max_steps, config.data.max_records) == (5e-4, 3, 10)
    with pytest.raises(MllmError, match=r"tiny-align.yaml: optim: unknown field\(s\) lrr"):
        load_train_config(path, ["optim.lrr=1"])
    with pytest.raises(MllmError, match="field max_steps: expected int"):
        load_train_config(path, ["max_steps=many"])
    with pytest.raises(MllmError, match="field llm: 'half'"):
        load_train_config(path, ["llm=half"])
    with pytest.raises(MllmError, match="field clip.image_heads: 'max' is not one of mean, cls"):
        load_train_config(path, ["clip.image_heads=max"])
    with pytest.raises(
        MllmError, match=r"field clip.object_count_keys: \['size'\]: expected some of all, color"
    ):
        load_train_config(path, ["clip.object_count_keys=[size]"])
    assert load_train_config(path, ["clip.object_count_keys=[color, shape]"]).clip.object_count_keys == [
        "color",
        "shape",
    ]
    instruct = REPO / "configs" / "train" / "tiny-instruct.yaml"
    for override in ("vision_source=runs/x/clip/vision", "projector.pool_tokens=1"):
        field = override.split(".")[0].split("=")[0]
        with pytest.raises(
            MllmError, match=f"tiny-instruct.yaml: field {field}: a checkpoint \\(init_from\\)"
        ):
            load_train_config(instruct, [override])
    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: align\n  model: [\n")
    with pytest.raises(MllmError, match="bad.yaml: invalid YAML"):
        load_train_config(bad)


def test_deepspeed_config_filled_from_training_config() -> None:
    config = load_train_config(
        REPO / "configs" / "train" / "tiny-align.yaml",
        ["deepspeed=configs/deepspeed/zero2.json", "micro_batch_size=3", "grad_accum=5"],
    )
    ds = deepspeed_config(config, world=2)
    assert ds["train_batch_size"] == 30 and ds["train_micro_batch_size_per_gpu"] == 3
    assert ds["gradient_accumulation_steps"] == 5 and ds["gradient_clipping"] == config.optim.max_grad_norm
    assert ds["zero_optimization"]["stage"] == 2 and ds["fp16"]["enabled"] is False
    for name in ("zero0", "zero2", "zero2_offload", "zero3", "zero3_offload"):
        config.deepspeed = str(REPO / "configs" / "deepspeed" / f"{name}.json")
        assert deepspeed_config(config, world=1)["train_batch_size"] == 15


def test_precision_auto_is_bf16_only_where_the_cpu_multiplies_it(caplog: pytest.LogCaptureFixture) -> None:
    from mllm.bf16_linear import native_bf16_available

    path = REPO / "configs" / "train" / "tiny-align.yaml"
    native = native_bf16_available()  # AVX-512 BF16 or AMX (the suite runs with DS_ACCELERATOR=cpu)
    assert load_train_config(path).precision == "auto"
    assert deepspeed_config(load_train_config(path), world=1)["bf16"]["enabled"] is native
    assert deepspeed_config(load_train_config(path, ["precision=fp32"]), world=1)["bf16"]["enabled"] is False
    with caplog.at_level("WARNING", logger="train.engine"):
        assert (
            deepspeed_config(load_train_config(path, ["precision=bf16"]), world=1)["bf16"]["enabled"] is True
        )
    warned = [r.getMessage() for r in caplog.records if "emulated" in r.getMessage()]
    emulated = (
        "precision bf16: this CPU has neither AVX-512 BF16 nor AMX, so bf16 is emulated, many times slower than "
        "fp32; precision auto picks fp32 here"
    )
    assert warned == ([] if native else [emulated])
    fp16 = deepspeed_config(load_train_config(path, ["precision=fp16"]), world=1)
    assert fp16["fp16"]["enabled"] is True and fp16["bf16"]["enabled"] is False


def test_cosine_schedule_with_warmup() -> None:
    factor = cosine_lambda(max_steps=100, warmup_steps=10, min_ratio=0.1)
    assert factor(0) == pytest.approx(0.1) and factor(9) == pytest.approx(1.0)
    assert factor(55) == pytest.approx(0.55) and factor(100) == pytest.approx(0.1)
    assert all(factor(s) >= factor(s + 1) for s in range(10, 100))


def test_batches_are_length_grouped_deterministic_and_resumable() -> None:
    lengths = [(i * 37) % 101 for i in range(200)]
    batches = epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert batches == epoch_batches(lengths, 8, seed=1, epoch=0, group_by_length=True)
    assert batches != epoch_batches(lengths, 8, seed=1, epoch=1, group_by_length=True)
    assert sorted(i for b in batches for i in b) == list(range(200))
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 10  # grouped: similar lengths share a batch
    full = BatchStream(lengths, 4, rank=1, world=2, seed=1, group_by_length=True)
    seen = [full.next() for _ in range(40)]
    resumed = BatchStream(
        lengths, 4, rank=1, world=2, seed=1, group_by_length=True, position=DataPosition(0, 17)
    )
    assert [resumed.next() for _ in range(23)] == seen[17:]
    assert full.position.epoch == 1  # 25 batches per epoch
