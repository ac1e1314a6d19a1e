"""The synthetic shapes world: scene sampling and drawing (`world`), questions and answers (`questions`),
text-only general questions (`general`) and the data set writer behind `mllm data synth` (`writer`)."""
