"""The shapes world: its vocabulary (shapes, colours, sizes, positions, backgrounds), scene sampling for each
split, and drawing a scene with PIL (no anti-aliasing, so every object pixel has its colour exactly).

Geometry: each object has an integer center and an integer radius r; the shape fits in the box
[cx - r, cy - r, cx + r, cy + r], boxes of different objects keep a gap, and every box lies inside the canvas.
Centers keep a margin from the 3x3 grid lines, so an object's position (the cell of its center) is never a
judgement call.

Splits: `train` and `test` never show the 5 `HELD_OUT_PAIRS` (colour, shape); `compositional` images show at
least one of them. `train` and `test` are the same distribution but can never share a scene: a scene goes
to `test` only when a hash of its content falls in the test bucket, and to `train` only when it does not.
"""

from __future__ import annotations

import hashlib
import math
import random
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw

SHAPES = ("circle", "square", "triangle", "star", "diamond")
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (230, 0, 0),
    "green": (0, 170, 0),
    "blue": (0, 70, 255),
    "yellow": (255, 230, 0),
    "purple": (150, 0, 200),
    "orange": (255, 120, 0),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "white": (255, 255, 255),
    "light gray": (200, 200, 200),
    "dark gray": (70, 70, 70),
}
SIZES = ("small", "large")
RADIUS_FRACTION = {"small": (0.07, 0.09), "large": (0.14, 0.18)}  # of the canvas side: about 8% and 16%
POSITIONS = (
    ("top left", "top", "top right"),
    ("left", "center", "right"),
    ("bottom left", "bottom", "bottom right"),
)
HELD_OUT_PAIRS = (
    ("red", "star"),
    ("green", "circle"),
    ("blue", "triangle"),
    ("yellow", "square"),
    ("purple", "diamond"),
)
ALL_PAIRS = tuple((color, shape) for color in COLORS for shape in SHAPES)
SEEN_PAIRS = tuple(pair for pair in ALL_PAIRS if pair not in HELD_OUT_PAIRS)
SPLITS = ("train", "test", "compositional")
MIN_IMAGE_SIZE = 64
MAX_OBJECTS = 6
TEST_BUCKETS = 10  # one bucket in ten of scene hashes belongs to `test`
_CELL_MARGIN = 0.04  # centers stay this far (fraction of the side) from the 3x3 grid lines
_GAP = 0.02  # minimum gap between object boxes (fraction of the side)
_STAR_INNER = 0.45  # inner / outer radius of the star: a fat star, so its center is well inside the fill


@dataclass(frozen=True)
class SceneObject:
    """One drawn object. `bbox` is the extent of its painted pixels [x0, y0, x1, y1], inclusive."""

    shape: str
    color: str
    size: str
    center: tuple[int, int]
    radius: int
    bbox: tuple[int, int, int, int]
    position: str

    def to_json(self) -> dict[str, Any]:
        return {
            "shape": self.shape,
            "color": self.color,
            "size": self.size,
            "center": list(self.center),
            "radius": self.radius,
            "bbox": list(self.bbox),
            "position": self.position,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SceneObject:
        return cls(
            data["shape"],
            data["color"],
            data["size"],
            tuple(data["center"]),
            data["radius"],
            tuple(data["bbox"]),
            data["position"],
        )


@dataclass(frozen=True)
class Scene:
    """A whole image: file name, canvas side, background and objects (in reading order)."""

    image: str
    image_size: int
    background: str
    objects: tuple[SceneObject, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "image_size": self.image_size,
            "background": self.background,
            "objects": [obj.to_json() for obj in self.objects],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Scene:
        return cls(
            data["image"],
            data["image_size"],
            data["background"],
            tuple(SceneObject.from_json(o) for o in data["objects"]),
        )


def position_of(center: tuple[int, int], image_size: int) -> str:
    """Name of the 3x3 cell holding `center`."""
    x, y = center
    return POSITIONS[min(2, y * 3 // image_size)][min(2, x * 3 // image_size)]


def shape_points(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Outline of a polygon shape inside the box of half-side r around (cx, cy); a circle has none."""
    if shape == "square":
        h = 0.8 * r
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    if shape == "star":
        points = []
        for k in range(10):
            radius = r if k % 2 == 0 else _STAR_INNER * r
            angle = -math.pi / 2 + k * math.pi / 5
            points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
        return points
    if shape == "circle":
        return []
    raise ValueError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")


def _bbox(shape: str, cx: int, cy: int, r: int) -> tuple[int, int, int, int]:
    points = shape_points(shape, cx, cy, r)
    if not points:
        return (cx - r, cy - r, cx + r, cy + r)
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    return (math.floor(min(xs)), math.floor(min(ys)), math.ceil(max(xs)), math.ceil(max(ys)))


def _radius_range(size: str, image_size: int) -> tuple[int, int]:
    low, high = RADIUS_FRACTION[size]
    return round(low * image_size), round(high * image_size)


def _center_range(cell: int, r: int, image_size: int) -> tuple[int, int]:
    """Integer centers inside grid cell `cell` (0-2, one axis), off the grid lines, with the box in the canvas."""
    margin = _CELL_MARGIN * image_size
    low = max(math.ceil(cell * image_size / 3 + margin), r)
    high = min(math.floor((cell + 1) * image_size / 3 - margin), image_size - 1 - r)
    return low, high


def _place(rng: random.Random, sizes: list[str], image_size: int) -> list[tuple[int, int, int]] | None:
    """(cx, cy, r) for each size without overlaps, or None when this attempt got crowded."""
    gap = max(2, round(_GAP * image_size))
    placed: list[tuple[int, int, int]] = []
    for size in sizes:
        r_low, r_high = _radius_range(size, image_size)
        for _ in range(60):
            r = rng.randint(r_low, r_high)
            x_low, x_high = _center_range(rng.randrange(3), r, image_size)
            y_low, y_high = _center_range(rng.randrange(3), r, image_size)
            if x_low > x_high or y_low > y_high:
                continue
            cx, cy = rng.randint(x_low, x_high), rng.randint(y_low, y_high)
            if all(abs(cx - px) >= r + pr + gap or abs(cy - py) >= r + pr + gap for px, py, pr in placed):
                placed.append((cx, cy, r))
                break
        else:
            return None
    return placed


def scene_bucket(scene: Scene) -> int:
    """A hash of the scene's content (order-free) in [0, TEST_BUCKETS); bucket 0 is `test`'s."""
    objects = sorted(f"{o.shape},{o.color},{o.center[0]},{o.center[1]},{o.radius}" for o in scene.objects)
    text = f"{scene.image_size}|{scene.background}|{';'.join(objects)}"
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % TEST_BUCKETS


def _sample_once(rng: random.Random, image_name: str, image_size: int, split: str) -> Scene | None:
    count = rng.randint(1, MAX_OBJECTS)
    sizes = [rng.choice(SIZES) for _ in range(count)]
    if split == "compositional":
        pairs = [rng.choice(HELD_OUT_PAIRS)] + [rng.choice(ALL_PAIRS) for _ in range(count - 1)]
    else:
        pairs = [rng.choice(SEEN_PAIRS) for _ in range(count)]
    background = rng.choice(tuple(BACKGROUNDS))
    order = sorted(range(count), key=lambda i: sizes[i] != "large")  # large ones first: easier to fit
    spots = _place(rng, [sizes[i] for i in order], image_size)
    if spots is None:
        return None
    objects = []
    for i, (cx, cy, r) in zip(order, spots):
        color, shape = pairs[i]
        objects.append(
            SceneObject(
                shape,
                color,
                sizes[i],
                (cx, cy),
                r,
                _bbox(shape, cx, cy, r),
                position_of((cx, cy), image_size),
            )
        )
    objects.sort(key=lambda o: (o.center[1] * 3 // image_size, o.center[0], o.center[1]))
    return Scene(image_name, image_size, background, tuple(objects))


def sample_scene(rng: random.Random, image_name: str, image_size: int, split: str) -> Scene:
    """A random scene of the split (see the module docstring); deterministic for the state of `rng`."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
    if image_size < MIN_IMAGE_SIZE:
        raise ValueError(f"image size {image_size} is below the minimum of {MIN_IMAGE_SIZE}")
    for _ in range(10_000):
        scene = _sample_once(rng, image_name, image_size, split)
        if scene is None:
            continue
        in_test_bucket = scene_bucket(scene) == 0
        if split == "compositional" or in_test_bucket == (split == "test"):
            return scene
    raise RuntimeError(f"could not sample a {split} scene for {image_name} in 10000 attempts")


def draw_scene(scene: Scene) -> Image.Image:
    """The scene as an RGB image, plain colours, no anti-aliasing."""
    size = scene.image_size
    image = Image.new("RGB", (size, size), BACKGROUNDS[scene.background])
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy = obj.center
        fill = COLORS[obj.color]
        points = shape_points(obj.shape, cx, cy, obj.radius)
        if points:
            draw.polygon(points, fill=fill)
        else:
            draw.ellipse((cx - obj.radius, cy - obj.radius, cx + obj.radius, cy + obj.radius), fill=fill)
    return image
