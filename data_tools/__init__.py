"""Data tools for mllm: LLaVA-format loading and validation, converters, statistics and the synthetic
shapes world (`mllm data validate|stats|convert|synth`). Depends on `mllm`; `mllm` never imports it."""
