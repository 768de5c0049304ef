"""Trainer plug-ins: atomic checkpoint writes and the deterministic, resumable data order."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file, then rename it into place: a kill mid-write
    never leaves a half-written `last.ckpt`."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        if not isinstance(get_filesystem(str(path)), type(get_filesystem("/"))):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        torch.save(checkpoint, tmp)
        os.replace(tmp, path)


class StepBatchSampler(Sampler[list[int]]):
    """Micro-batches of indices as a pure function of (seed, micro-batch number).

    The stream is the concatenation of seeded per-epoch permutations, cut into micro-batches;
    rank r of w takes micro-batches r, r+w, ... . `position()` is asked when iteration starts
    and returns (micro-batches already done, rank, world size): a resumed run thus sees exactly
    the batches an uninterrupted run would have seen.
    """

    def __init__(self, num_examples: int, batch_size: int, num_batches: int, seed: int, position: Callable[[], tuple[int, int, int]] = lambda: (0, 0, 1)):
        if num_examples < 1:
            raise ValueError("no training examples: raise data.max_samples or lower data.val_size")
        self.n, self.batch_size, self.num_batches, self.seed, self.position = num_examples, batch_size, num_batches, seed, position

    def __len__(self) -> int:
        return max(self.num_batches - self.position()[0], 0)

    def __iter__(self) -> Iterator[list[int]]:
        start, rank, world_size = self.position()
        for local in range(start, self.num_batches):
            yield self.batch(local * world_size + rank)

    def batch(self, index: int) -> list[int]:
        """Indices of global micro-batch `index`."""
        first = index * self.batch_size
        return [self._at(position) for position in range(first, first + self.batch_size)]

    def _at(self, position: int) -> int:
        epoch, offset = divmod(position, self.n)
        return int(self._permutation(epoch)[offset])

    def _permutation(self, epoch: int) -> torch.Tensor:
        cache = getattr(self, "_cache", None)
        if cache is None or cache[0] != epoch:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            self._cache = (epoch, torch.randperm(self.n, generator=generator))
        return self._cache[1]
