"""Deterministic, resumable batch order: for (seed, epoch) a fixed list of global micro-batches, optionally
grouped by length (shuffle, sort inside mega-chunks, shuffle the batches), each split across the ranks.

The data position of a run is just (epoch, index of the next global micro-batch), so resuming replays
exactly the batches a run that never stopped would have seen.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from mllm.errors import MllmError

MEGA_BATCHES = 50  # global batches per length-sorted chunk


@dataclass
class DataPosition:
    """Where the data stream stands: the epoch and the next global micro-batch inside it."""

    epoch: int = 0
    batch: int = 0


def epoch_batches(
    lengths: Sequence[int], global_batch: int, seed: int, epoch: int, group_by_length: bool
) -> list[list[int]]:
    """Global micro-batches (lists of sample indices, each `global_batch` long) of one epoch; the incomplete
    last one is dropped so every rank gets the same number of samples."""
    if len(lengths) < global_batch:
        raise MllmError(
            f"{len(lengths)} training samples are fewer than one global micro-batch of {global_batch} "
            "(micro_batch_size x world size)"
        )
    rng = random.Random(f"mllm-train/{seed}/{epoch}")
    order = list(range(len(lengths)))
    rng.shuffle(order)
    if group_by_length:
        chunk = global_batch * MEGA_BATCHES
        order = [
            i
            for start in range(0, len(order), chunk)
            for i in sorted(order[start : start + chunk], key=lambda i: -lengths[i])
        ]
    batches = [order[i : i + global_batch] for i in range(0, len(order) - global_batch + 1, global_batch)]
    if group_by_length:
        rng.shuffle(batches)
    return batches


def rank_slice(batch: Sequence[int], rank: int, world: int) -> list[int]:
    """This rank's share of a global micro-batch."""
    per_rank = len(batch) // world
    return list(batch[rank * per_rank : (rank + 1) * per_rank])


class BatchStream:
    """Yields this rank's micro-batches forever (epoch after epoch), tracking its `position`."""

    def __init__(
        self,
        lengths: Sequence[int],
        micro_batch_size: int,
        rank: int,
        world: int,
        seed: int,
        group_by_length: bool,
        position: DataPosition | None = None,
    ) -> None:
        self.lengths = list(lengths)
        self.micro_batch_size = micro_batch_size
        self.rank = rank
        self.world = world
        self.seed = seed
        self.group_by_length = group_by_length
        self.position = position or DataPosition()
        self._epoch_cache: tuple[int, list[list[int]]] | None = None

    def _batches(self, epoch: int) -> list[list[int]]:
        if self._epoch_cache is None or self._epoch_cache[0] != epoch:
            batches = epoch_batches(
                self.lengths, self.micro_batch_size * self.world, self.seed, epoch, self.group_by_length
            )
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    @property
    def batches_per_epoch(self) -> int:
        return len(self._batches(self.position.epoch))

    def next(self) -> list[int]:
        """Indices of this rank's next micro-batch; advances the position."""
        batches = self._batches(self.position.epoch)
        if self.position.batch >= len(batches):
            self.position = DataPosition(self.position.epoch + 1, 0)
            batches = self._batches(self.position.epoch)
        batch = batches[self.position.batch]
        self.position = DataPosition(self.position.epoch, self.position.batch + 1)
        return rank_slice(batch, self.rank, self.world)
