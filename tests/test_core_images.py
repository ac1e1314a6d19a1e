"""Image loading: broken, empty, fake and oversized files give one clear error naming the file; every PIL mode,
animated GIFs and EXIF rotation become a correctly oriented RGB image; preprocessing pads to a square."""

from __future__ import annotations

import io

import pytest
import torch
from PIL import Image

from mllm.errors import MllmError
from mllm.images import ImagePreprocessor, load_image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_bad_files_name_the_file(tmp_path):
    cases = {
        "empty.png": (b"", "image file is empty"),
        "text.png": (b"this is not an image\n", "not a readable image"),
        "truncated.png": (png_bytes(Image.new("RGB", (64, 64), "red"))[:60], "corrupt or truncated"),
    }
    for name, (data, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(MllmError, match=f"{name}: {message}"):
            load_image(path)
    with pytest.raises(MllmError, match="missing.png: image file not found"):
        load_image(tmp_path / "missing.png")


def test_pixel_limit_refuses_bombs(tmp_path):
    path = tmp_path / "big.png"
    path.write_bytes(png_bytes(Image.new("L", (2000, 1000))))
    with pytest.raises(MllmError, match="big.png: image is 2000x1000, over the limit of 1000000 pixels"):
        load_image(path, max_pixels=1_000_000)
    assert load_image(path, max_pixels=2_000_000).size == (2000, 1000)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "1", "I;16"])
def test_all_modes_become_rgb(mode):
    image = Image.new(mode, (5, 3))
    assert load_image(png_bytes(image, "TIFF" if mode in ("CMYK", "I;16") else "PNG")).mode == "RGB"


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert load_image(png_bytes(image)).getpixel((0, 0)) == (255, 255, 255)


def test_animated_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:])
    assert load_image(buf.getvalue()).getpixel((4, 4)) == (255, 0, 0)


def test_exif_orientation_honoured():
    image = Image.new("RGB", (40, 20), "red")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    loaded = load_image(png_bytes(image, "JPEG", exif=exif))
    assert loaded.size == (20, 40)


def test_one_pixel_and_padding():
    pre = ImagePreprocessor(8, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])
    tiny = pre([Image.new("RGB", (1, 1), (255, 255, 255))])
    assert tiny.shape == (1, 3, 8, 8) and torch.allclose(tiny, torch.ones_like(tiny))
    wide = pre([Image.new("RGB", (8, 4), (255, 255, 255))])[0]
    assert torch.allclose(wide[:, 0, :], torch.zeros(3, 8), atol=0.01)  # top rows padded with the mean
    assert torch.allclose(wide[:, 4, :], torch.ones(3, 8))
