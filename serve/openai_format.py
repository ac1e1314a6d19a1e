"""OpenAI chat-completions requests -> conversation turns and generation settings, with every limit checked.

Messages are `{"role", "content"}` where content is a string or a list of parts `{"type": "text", "text"}` /
`{"type": "image_url", "image_url": {"url"}}`. Image URLs are base64 data URLs; http(s) URLs are fetched only
when remote images are allowed, local paths (or file:// URLs) only inside an allowed folder. Problems raise
ApiError, which carries the HTTP status and OpenAI's error fields (`message`, `type`, `param`, `code`).
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from mllm.errors import MllmError
from mllm.images import load_image
from serve.session import GenerationSettings, Turn

DATA_URL = re.compile(
    r"^data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[\w.+-]+=[^;,]*)*)(?P<b64>;base64)?,", re.IGNORECASE
)
MAX_STOP_STRINGS = 4


class ApiError(MllmError):
    """A request the API refuses: HTTP status plus OpenAI's error fields."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        code: str | None = None,
        type: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        self.type = type

    def body(self) -> dict[str, Any]:
        """OpenAI's error JSON."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class ImagePolicy:
    """Which image sources a request may use, and how large they may be."""

    max_pixels: int = 4096 * 4096
    max_bytes: int = 20 * 1024 * 1024
    allow_remote: bool = False
    local_folder: Path | None = None
    remote_timeout_s: float = 10.0


@dataclass
class ChatRequest:
    """A parsed chat-completions request."""

    turns: list[Turn]
    settings: GenerationSettings
    stream: bool = False
    include_usage: bool = False
    model: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _number(
    body: dict[str, Any], name: str, default: float, low: float, high: float, integer: bool = False
) -> float:
    value = body.get(name)
    if value is None:
        return default
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise ApiError(
            400, f"{name}: expected {'an integer' if integer else 'a number'}, got {value!r}", name
        )
    if not low <= value <= high:
        raise ApiError(400, f"{name}: {value} is out of range [{low}, {high}]", name, "invalid_value")
    return value


def _decode_data_url(url: str, param: str) -> bytes:
    match = DATA_URL.match(url)
    if match is None or not match.group("b64"):
        raise ApiError(
            400,
            f"{param}: expected a base64 data URL (data:image/png;base64,...)",
            param,
            "invalid_image_url",
        )
    payload = url[match.end() :]
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{param}: the data URL is not valid base64", param, "invalid_base64") from None


def _fetch_remote(url: str, policy: ImagePolicy, param: str) -> bytes:
    if not policy.allow_remote:
        raise ApiError(
            400,
            f"{param}: remote image URLs are disabled on this server (start it with "
            "--allow-remote-images); send the image as a base64 data URL",
            param,
            "remote_images_disabled",
        )
    request = urllib.request.Request(url, headers={"User-Agent": "mllm-api"})
    try:
        with urllib.request.urlopen(request, timeout=policy.remote_timeout_s) as response:
            data = response.read(policy.max_bytes + 1)
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise ApiError(400, f"{param}: cannot fetch the image ({exc})", param, "image_fetch_failed") from None
    if len(data) > policy.max_bytes:
        raise ApiError(
            413, f"{param}: the image is larger than {policy.max_bytes} bytes", param, "image_too_large"
        )
    return data


def _read_local(url: str, policy: ImagePolicy, param: str) -> bytes:
    if policy.local_folder is None:
        raise ApiError(
            400,
            f"{param}: local image paths are disabled on this server (start it with "
            "--allow-local-images DIR)",
            param,
            "local_images_disabled",
        )
    raw = urllib.parse.unquote(urllib.parse.urlparse(url).path) if url.startswith("file:") else url
    root = policy.local_folder.resolve()
    path = (root / raw).resolve()  # an absolute `raw` replaces root; symlinks are followed before the check
    if not path.is_relative_to(root):
        raise ApiError(
            403,
            f"{param}: {raw} is outside the allowed image folder",
            param,
            "path_not_allowed",
            type="permission_error",
        )
    if not path.is_file():
        raise ApiError(400, f"{param}: {raw}: image file not found", param, "image_not_found")
    if path.stat().st_size > policy.max_bytes:
        raise ApiError(
            413, f"{param}: the image is larger than {policy.max_bytes} bytes", param, "image_too_large"
        )
    return path.read_bytes()


def load_image_url(url: Any, policy: ImagePolicy, param: str) -> Image.Image:
    """Decode an image_url's url (data URL, allowed http(s) URL or allowed local path) into an RGB image."""
    if not isinstance(url, str) or not url:
        raise ApiError(400, f"{param}: expected a URL string", param)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "data":
        data = _decode_data_url(url, param)
    elif scheme in ("http", "https"):
        data = _fetch_remote(url, policy, param)
    elif scheme in ("file", ""):
        data = _read_local(url, policy, param)
    else:
        raise ApiError(400, f"{param}: unsupported URL scheme {scheme!r}", param, "invalid_image_url")
    try:
        return load_image(data, policy.max_pixels)
    except MllmError as exc:
        code = "image_too_large" if "over the limit" in str(exc) else "invalid_image"
        raise ApiError(400, f"{param}: {exc}", param, code) from None


def _turn(message: Any, index: int, policy: ImagePolicy) -> Turn:
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise ApiError(400, f"{where}: expected an object", where)
    role = message.get("role")
    if role == "developer":
        role = "system"
    if role not in ("system", "user", "assistant"):
        raise ApiError(
            400, f"{where}.role: expected system, developer, user or assistant, got {role!r}", f"{where}.role"
        )
    content = message.get("content")
    if content is None and role == "assistant":
        content = ""
    if isinstance(content, str):
        return Turn(role, content)
    if not isinstance(content, list):
        raise ApiError(400, f"{where}.content: expected a string or a list of parts", f"{where}.content")
    texts: list[str] = []
    images: list[Image.Image] = []
    for j, part in enumerate(content):
        param = f"{where}.content[{j}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise ApiError(400, f"{param}.text: expected a string", f"{param}.text")
            texts.append(part["text"])
        elif kind == "image_url":
            if role != "user":
                raise ApiError(400, f"{param}: only user messages may carry images", param)
            spec = part.get("image_url")
            url = spec.get("url") if isinstance(spec, dict) else spec
            images.append(load_image_url(url, policy, f"{param}.image_url.url"))
        else:
            raise ApiError(
                400, f"{param}.type: expected 'text' or 'image_url', got {kind!r}", f"{param}.type"
            )
    return Turn(role, "\n".join(texts), images)


def parse_chat_request(
    body: Any, policy: ImagePolicy, max_tokens_limit: int, default_max_tokens: int, max_images: int
) -> ChatRequest:
    """Validate a chat-completions body and turn it into a ChatRequest (raises ApiError)."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages: expected a non-empty list", "messages")
    images = sum(
        isinstance(p, dict) and p.get("type") == "image_url"
        for m in messages
        if isinstance(m, dict) and isinstance(m.get("content"), list)
        for p in m["content"]
    )
    if images > max_images:
        raise ApiError(
            400,
            f"messages: {images} images; this model accepts at most {max_images}",
            "messages",
            "too_many_images",
        )
    turns = [_turn(message, index, policy) for index, message in enumerate(messages)]
    for index, turn in enumerate(turns):
        if turn.role == "user" and not turn.text.strip() and not turn.images:
            where = f"messages[{index}].content"
            raise ApiError(400, f"{where}: the message is empty (no text, no image)", where, "empty_message")
    if turns[-1].role != "user":
        raise ApiError(400, "messages: the last message must come from the user", "messages")
    if body.get("n", 1) != 1:
        raise ApiError(400, "n: only n=1 is supported", "n", "invalid_value")
    token_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = int(_number(body, token_field, default_max_tokens, 1, max_tokens_limit, integer=True))
    temperature = float(_number(body, "temperature", 1.0, 0.0, 2.0))
    top_p = float(_number(body, "top_p", 1.0, 0.0, 1.0))
    if top_p == 0:
        raise ApiError(400, "top_p: must be greater than 0", "top_p", "invalid_value")
    stop = body.get("stop")
    stops = [] if stop is None else [stop] if isinstance(stop, str) else stop
    if (
        not isinstance(stops, list)
        or not all(isinstance(s, str) for s in stops)
        or len(stops) > MAX_STOP_STRINGS
    ):
        raise ApiError(
            400, f"stop: expected a string or a list of at most {MAX_STOP_STRINGS} strings", "stop"
        )
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise ApiError(400, "stream: expected true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise ApiError(400, "stream_options: expected an object", "stream_options")
    model = body.get("model")
    settings = GenerationSettings(
        max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, stop=tuple(s for s in stops if s)
    )
    return ChatRequest(
        turns, settings, stream, bool(options.get("include_usage")), model if isinstance(model, str) else None
    )
