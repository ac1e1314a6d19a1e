"""Weight-space interpolation between a LoRA-tuned checkpoint and its base LLM (WiSE-FT, Wortsman et al. 2022).

The LoRA update of every adapted layer is `B @ A * alpha / r`; scaling every `lora_B` by `s` scales the update by
`s`: 1 is the checkpoint as trained, 0 the base LLM (with the trained projector), values between trade the
fine-tuned skills against the base model's. A new checkpoint folder is written (the source is left as it is),
whose `mllm.json` records the scale under `data.lora_scale` (multiplied through when the source was itself
interpolated) and the source under `data.lora_scale_of`.

    python -m train.interpolate runs/release/instruct/final --out runs/release/scaled-0.7 --lora-scale 0.7
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from peft import PeftModel

from mllm.checkpoint import load_checkpoint, read_meta, save_checkpoint
from mllm.errors import MllmError

log = logging.getLogger(__name__)


def interpolate(checkpoint: str | Path, out: str | Path, lora_scale: float) -> Path:
    """Write `checkpoint` with its LoRA update scaled by `lora_scale` to `out`; returns `out`."""
    checkpoint, out = Path(checkpoint), Path(out)
    if not lora_scale >= 0:  # also refuses NaN
        raise MllmError(f"--lora-scale {lora_scale}: expected a number >= 0 (1 keeps the update, 0 drops it)")
    if out.resolve() == checkpoint.resolve():
        raise MllmError(f"{out}: the output folder is the source checkpoint; write the result elsewhere")
    meta = read_meta(checkpoint)
    model = load_checkpoint(checkpoint)
    if not isinstance(model.llm, PeftModel):
        raise MllmError(f"{checkpoint}: has no LoRA adapter (config lora.enabled is false); nothing to scale")
    scaled = 0
    with torch.no_grad():
        for name, param in model.llm.named_parameters():
            if "lora_B" in name or "lora_embedding_B" in name:
                param.mul_(lora_scale)
                scaled += 1
    if scaled == 0:
        raise MllmError(f"{checkpoint}: its adapter has no lora_B weights to scale")
    data = dict(meta.get("data") or {})
    data["lora_scale"] = float(data.get("lora_scale", 1.0)) * lora_scale
    data["lora_scale_of"] = str(checkpoint)
    save_checkpoint(model, out, stage=meta.get("stage", "none"), step=meta.get("step", 0), data=data)
    log.info("%s: %d LoRA B matrices scaled by %g -> %s", checkpoint, scaled, lora_scale, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.interpolate", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="an mllm checkpoint folder with a LoRA adapter")
    parser.add_argument("--out", type=Path, required=True, help="the new checkpoint folder")
    parser.add_argument(
        "--lora-scale",
        type=float,
        required=True,
        help="factor on the LoRA update: 1 as trained, 0 the base LLM",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        interpolate(args.checkpoint, args.out, args.lora_scale)
    except MllmError as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
