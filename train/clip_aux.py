"""The auxiliary objective of stage `clip`: per-patch and per-image targets from a shapes-world scene, and
`ClipWithAux`, the CLIPModel whose feature-layer patches also feed the heads that predict them.

Every patch says whether an object's center lies in it and, if so, names that object's colour, shape and size
(the shapes world keeps centers at least one patch apart at 16 px patches, so a patch is a slot for at most one
object; the attribute losses average over occupied patches only, so empty ones do not dilute them). Every patch
also names the 3x3 region it lies in (`top left` ... `bottom right`, the words position questions answer with),
so the frozen features carry where they are, not only what: the LLM then finds an object's region by content
rather than by counting token positions. The mean patch feature gives the background and the counts (all
objects, per colour, per shape); with `patch_counts` every patch predicts the counts too (the same head), so
any one image token carries them: a linear probe of a single patch then reads the total count about as well as
one of the mean (88-89% against 61-66% for a tower without; `python -m train.probe --counts`). With
`object_counts` only the patch holding an object's center predicts counts, the ones a question about that object
needs: how many objects there are in all, of its colour and of its shape, so that "How many red objects?" could be
read off a red object's token, as its position is, instead of adding up tokens (empty patches are not asked). The
tower learns them, but an assistant built on such a tower lost its position answers (train/release_notes.md,
session 19), so it is off in the release config; `object_count_keys` picks which of the three are trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from transformers import CLIPModel

from data_tools.synth.world import BACKGROUNDS, COLORS, MAX_OBJECTS, POSITIONS, SHAPES, SIZES
from train.config import IMAGE_HEADS, OBJECT_COUNT_KEYS

IGNORE = -100  # attribute target of a patch without an object center (cross_entropy's ignore_index)
# Per-patch labels of the object centered there, one categorical group per attribute (factorized, so a held-out
# colour-shape pair is still two familiar labels).
PATCH_GROUPS: dict[str, tuple[str, ...]] = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES}
# Per-image counts predicted from the mean patch feature: all objects, each colour, each shape.
COUNT_KEYS: tuple[str, ...] = ("all", *COLORS, *SHAPES)
# Per-patch counts of the object centered there (`object_counts`): all objects, those of its colour, of its shape
# (OBJECT_COUNT_KEYS, in that order in `cell_targets`' columns; `object_count_keys` picks which are trained).
OBJECT_COUNT_COLUMN = 1 + len(PATCH_GROUPS)  # where they start in `cell_targets`' columns
MAX_COUNT = MAX_OBJECTS
BACKGROUND_INDEX = {b: i for i, b in enumerate(BACKGROUNDS)}
REGIONS: tuple[str, ...] = tuple(name for row in POSITIONS for name in row)


def region_targets(grid: int) -> torch.Tensor:
    """[grid * grid]: index in REGIONS of the 3x3 region holding each patch's center (row-major patches)."""
    third = torch.div((torch.arange(grid) * 2 + 1) * 3, 2 * grid, rounding_mode="floor")
    return (third[:, None] * 3 + third[None, :]).flatten()


def patch_of(center: Sequence[int], image_size: int, grid: int) -> tuple[int, int]:
    """(row, column) of the grid x grid patch holding `center` (x, y) in an image_size x image_size scene."""
    x, y = center
    return min(grid - 1, y * grid // image_size), min(grid - 1, x * grid // image_size)


def cell_targets(scene: dict[str, Any], grid: int) -> torch.Tensor:
    """Per patch of the grid x grid: [occupied, colour, shape, size, count all, count colour, count shape],
    where occupied is 1 when an object's center falls in the patch, the attributes are that object's class
    indices and the counts how many objects the scene has in all, of that object's colour and of its shape
    (IGNORE where no object is, or where the object's attribute is None, as a repainted object's colour is;
    when two centers share a patch, the later object wins)."""
    targets = torch.full(
        (grid * grid, OBJECT_COUNT_COLUMN + len(OBJECT_COUNT_KEYS)), IGNORE, dtype=torch.long
    )
    targets[:, 0] = 0
    image_counts = dict(zip(COUNT_KEYS, count_targets(scene).tolist()))  # by "all", colour or shape name
    for obj in scene["objects"]:
        row, col = patch_of(obj["center"], scene["image_size"], grid)
        cell = row * grid + col
        targets[cell, 0] = 1
        for g, (group, labels) in enumerate(PATCH_GROUPS.items(), 1):
            targets[cell, g] = IGNORE if obj[group] is None else labels.index(obj[group])
        for k, key in enumerate(OBJECT_COUNT_KEYS):
            name = key if key == "all" else obj[key]
            if name is not None:
                targets[cell, OBJECT_COUNT_COLUMN + k] = image_counts[name]
    return targets


def count_targets(scene: dict[str, Any]) -> torch.Tensor:
    """How many objects the scene has in all, of each colour and of each shape (COUNT_KEYS order)."""
    objects = scene["objects"]
    counts = [len(objects)]
    counts += [sum(o["color"] == c for o in objects) for c in COLORS]
    counts += [sum(o["shape"] == s for o in objects) for s in SHAPES]
    return torch.tensor([min(c, MAX_COUNT) for c in counts], dtype=torch.long)


class ClipWithAux(nn.Module):
    """CLIPModel plus the auxiliary heads on layer `feature_layer`: per-patch attributes, background and counts
    from the mean patch feature (with `image_heads="cls"` from the class token instead), with `patch_counts` > 0
    the counts from every patch as well (that weight), and with `object_counts` > 0 the counts of each object's
    kind from the patch holding its center (that weight; `object_count_keys` of OBJECT_COUNT_KEYS)."""

    def __init__(
        self,
        clip: CLIPModel,
        feature_layer: int,
        patch_counts: float = 0.0,
        object_counts: float = 0.0,
        image_heads: str = "mean",
        object_count_keys: Sequence[str] = OBJECT_COUNT_KEYS,
    ) -> None:
        super().__init__()
        if image_heads not in IMAGE_HEADS:
            raise ValueError(f"clip.image_heads {image_heads!r}: expected one of {', '.join(IMAGE_HEADS)}")
        self.image_heads = image_heads
        self.patch_counts = patch_counts
        self.object_counts = object_counts
        unknown = sorted(set(object_count_keys) - set(OBJECT_COUNT_KEYS))
        if unknown or not object_count_keys:
            raise ValueError(
                f"object_count_keys {list(object_count_keys)!r}: expected some of {OBJECT_COUNT_KEYS}"
            )
        # the columns of `cell_targets` the object-count head predicts, in OBJECT_COUNT_KEYS order
        self.object_count_columns = [
            OBJECT_COUNT_COLUMN + k for k, key in enumerate(OBJECT_COUNT_KEYS) if key in object_count_keys
        ]
        self.clip = clip
        # DeepSpeed broadcasts parameters as bytes, which a 0-dim tensor cannot be viewed as: keep shape [1]
        clip.logit_scale = nn.Parameter(clip.logit_scale.detach().reshape(1))
        self.feature_layer = feature_layer
        hidden = clip.config.vision_config.hidden_size
        groups = {"occupied": 1, **{name: len(labels) for name, labels in PATCH_GROUPS.items()}}
        groups["region"] = len(REGIONS)
        self.patch_heads = nn.ModuleDict(
            {name: nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, n)) for name, n in groups.items()}
        )
        self.background_head = nn.Sequential(nn.LayerNorm(hidden), nn.Linear(hidden, len(BACKGROUNDS)))
        self.count_head = nn.Sequential(
            nn.LayerNorm(hidden), nn.Linear(hidden, len(COUNT_KEYS) * (MAX_COUNT + 1))
        )
        self.object_count_head = (
            nn.Sequential(
                nn.LayerNorm(hidden), nn.Linear(hidden, len(self.object_count_columns) * (MAX_COUNT + 1))
            )
            if object_counts > 0
            else None
        )

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor,
        cells: torch.Tensor,
        counts: torch.Tensor,
        background: torch.Tensor,
        aux_weight: float,
    ) -> dict[str, torch.Tensor]:
        out = self.clip(
            input_ids=input_ids,
            attention_mask=attention_mask,
            pixel_values=pixel_values,
            return_loss=True,
            output_hidden_states=True,
        )
        tokens = out.vision_model_output.hidden_states[self.feature_layer]
        patches = tokens[:, 1:]
        pooled = tokens[:, 0] if self.image_heads == "cls" else patches.mean(1)
        cross_entropy = nn.functional.cross_entropy
        patch_logits = {name: head(patches) for name, head in self.patch_heads.items()}
        occupied = patch_logits.pop("occupied").squeeze(-1)
        region_logits = patch_logits.pop("region")
        regions = region_targets(math.isqrt(patches.shape[1])).to(patches.device)
        aux = nn.functional.binary_cross_entropy_with_logits(occupied, cells[..., 0].to(occupied.dtype))
        aux = aux + cross_entropy(region_logits.flatten(0, 1), regions.repeat(patches.shape[0]))
        for g, logits in enumerate(patch_logits.values(), 1):  # the attribute columns of `cells`
            aux = aux + cross_entropy(logits.flatten(0, 1), cells[..., g].flatten(), ignore_index=IGNORE)
        count_logits = self.count_head(pooled).view(-1, len(COUNT_KEYS), MAX_COUNT + 1)
        aux = aux + cross_entropy(count_logits.flatten(0, 1), counts.flatten())
        if self.patch_counts > 0:
            per_patch = self.count_head(patches).view(*patches.shape[:2], len(COUNT_KEYS), MAX_COUNT + 1)
            every = counts[:, None].expand(-1, patches.shape[1], -1)
            aux = aux + self.patch_counts * cross_entropy(per_patch.flatten(0, 2), every.flatten())
        object_count_logits = None
        if self.object_count_head is not None:
            object_count_logits = self.object_count_head(patches).view(
                *patches.shape[:2], len(self.object_count_columns), MAX_COUNT + 1
            )
            targets = cells[..., self.object_count_columns]
            aux = aux + self.object_counts * cross_entropy(
                object_count_logits.flatten(0, 2), targets.flatten(), ignore_index=IGNORE
            )
        aux = aux + cross_entropy(self.background_head(pooled), background)
        return {
            "loss": out.loss + aux_weight * aux,
            "contrastive": out.loss,
            "aux": aux,
            "logits": out.logits_per_image,
            "occupied_logits": occupied,
            "region_logits": region_logits,
            "patch_logits": patch_logits,
            "count_logits": count_logits,
            "object_count_logits": object_count_logits,
        }
