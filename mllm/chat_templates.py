"""Named chat templates (Jinja, Hugging Face format) a model config can pick instead of its tokenizer's own."""

from __future__ import annotations

from mllm.registry import Registry

CHAT_TEMPLATES: Registry[str] = Registry("chat template")

# ChatML as SmolLM2, Qwen and others use it, without an injected default system prompt.
CHAT_TEMPLATES.add(
    "chatml",
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}",
)

# Llama-2 chat: [INST] user [/INST] reply </s>, the system prompt folded into the first user turn.
CHAT_TEMPLATES.add(
    "llama2",
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
    "{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' }}"
    "{% if loop.first and system %}{{ '<<SYS>>\n' + system + '\n<</SYS>>\n\n' }}{% endif %}"
    "{{ message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + ' ' + eos_token }}{% endif %}"
    "{% endfor %}",
)
