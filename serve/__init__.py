"""Serving: chat session logic without UI code (`session`), the Gradio chat UI (`ui`), scripted VQA and
scoring (`vqa`, `evaluate`), the OpenAI-compatible API (`api`, `openai_format`), export (`export`), and the
`mllm` front door with its subcommands (`cli`, `chat_cli`, `commands`)."""
