"""Image loading and preprocessing: decode safely (pixel limit, EXIF orientation, any mode -> RGB),
pad to square with the mean colour, resize and normalize into a pixel tensor."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from mllm.errors import MllmError
from mllm.limits import DEFAULT_MAX_PIXELS

ImageInput = str | Path | bytes | Image.Image


def _name(src: ImageInput) -> str:
    if isinstance(src, (str, Path)):
        return str(src)
    if isinstance(src, bytes):
        return f"<{len(src)} bytes>"
    return "<PIL image>"


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB; transparency is composited onto white, orientation from EXIF is applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")


def load_image(src: ImageInput, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Open `src` (path, bytes or PIL image) as RGB; refuses non-images, empty files and more than `max_pixels`."""
    if isinstance(src, Image.Image):
        image = src
    else:
        name = _name(src)
        try:
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
        except FileNotFoundError:
            raise MllmError(f"{name}: image file not found") from None
        except IsADirectoryError:
            raise MllmError(f"{name}: is a folder, not an image file") from None
        if not data:
            raise MllmError(f"{name}: image file is empty")
        try:
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise MllmError(f"{name}: image is {width}x{height}, over the limit of {max_pixels} pixels")
            image.seek(0)  # first frame of an animation
            image.load()
        except Image.DecompressionBombError as exc:
            # PIL's own bomb check (a larger limit) fires inside Image.open, before ours
            limit = min(max_pixels, Image.MAX_IMAGE_PIXELS or max_pixels)
            raise MllmError(f"{name}: image is over the limit of {limit} pixels ({exc})") from None
        except UnidentifiedImageError as exc:
            raise MllmError(f"{name}: not a readable image ({exc})") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise MllmError(f"{name}: corrupt or truncated image ({exc})") from None
    width, height = image.size
    if width * height > max_pixels:
        raise MllmError(f"{_name(src)}: image is {width}x{height}, over the limit of {max_pixels} pixels")
    return to_rgb(image)


class ImagePreprocessor:
    """Pad to square with the mean colour, resize to `size` x `size` (bicubic), scale to [0, 1], normalize."""

    def __init__(self, size: int, mean: Sequence[float], std: Sequence[float]) -> None:
        self.size = size
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)
        self.fill = tuple(round(m * 255) for m in mean)

    def pad_to_square(self, image: Image.Image) -> Image.Image:
        width, height = image.size
        if width == height:
            return image
        side = max(width, height)
        canvas = Image.new("RGB", (side, side), self.fill)
        canvas.paste(image, ((side - width) // 2, (side - height) // 2))
        return canvas

    def __call__(self, images: Sequence[ImageInput], max_pixels: int = DEFAULT_MAX_PIXELS) -> torch.Tensor:
        """A float32 tensor [len(images), 3, size, size]."""
        tensors = []
        for src in images:
            image = self.pad_to_square(load_image(src, max_pixels))
            if image.size != (self.size, self.size):
                image = image.resize((self.size, self.size), Image.Resampling.BICUBIC)
            array = torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)
            tensors.append((array.float() / 255.0 - self.mean) / self.std)
        if not tensors:
            return torch.empty(0, 3, self.size, self.size)
        return torch.stack(tensors)
