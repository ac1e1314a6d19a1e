"""Checks of the image files a record names: the path stays inside the image folder, the file exists, is an
image that decodes, and is not a decompression bomb (more pixels than a limit, read from the header first)."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from data_tools.schema import IMAGE_INVALID, IMAGE_MISSING, IMAGE_PATH, IMAGE_TOO_LARGE, Problem
from mllm.limits import DEFAULT_MAX_PIXELS


def resolve_image(folder: Path, relative: str, field_name: str) -> tuple[Path | None, Problem | None]:
    """The file `relative` names inside `folder`, or the problem when it is absolute or escapes the folder
    (`..` parts or a symbolic link pointing elsewhere)."""
    if Path(relative).is_absolute():
        return None, Problem(
            IMAGE_PATH, field_name, f"absolute path {relative!r}; paths are relative to the image folder"
        )
    if "\x00" in relative:
        return None, Problem(IMAGE_PATH, field_name, f"path {relative!r} contains a NUL character")
    root = folder.resolve()
    target = (root / relative).resolve()
    if not target.is_relative_to(root):
        return None, Problem(IMAGE_PATH, field_name, f"path {relative!r} escapes the image folder {folder}")
    return target, None


def check_image_file(path: Path, field_name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Problem | None:
    """None when `path` is a decodable image of at most `max_pixels` pixels, else the problem."""
    if not path.exists():
        return Problem(IMAGE_MISSING, field_name, f"image file not found: {path}")
    if not path.is_file():
        return Problem(IMAGE_INVALID, field_name, f"not a file: {path}")
    try:
        with warnings.catch_warnings():
            # The pixel limit is ours (checked from the header below); Pillow's own warning would only repeat it.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
                if width * height > max_pixels:
                    return Problem(
                        IMAGE_TOO_LARGE,
                        field_name,
                        f"image is {width}x{height} = {width * height} pixels, over the limit of "
                        f"{max_pixels} (--max-pixels): {path}",
                    )
                image.load()
    except Image.DecompressionBombError as exc:
        return Problem(
            IMAGE_TOO_LARGE, field_name, f"refused by Pillow as a decompression bomb ({exc}): {path}"
        )
    except UnidentifiedImageError:
        return Problem(IMAGE_INVALID, field_name, f"not an image (format not recognized): {path}")
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as exc:
        return Problem(IMAGE_INVALID, field_name, f"image does not decode ({exc}): {path}")
    return None
