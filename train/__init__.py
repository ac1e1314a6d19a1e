"""Training: the `clip` (our own vision tower), `align` (projector) and `instruct` (projector + LoRA/QLoRA/full
LLM) stages on DeepSpeed, with resumable checkpoints, metrics, plots and evaluation (`mllm train`)."""
