"""Trainer plug-ins: atomic checkpoint writes, a CSV log that survives resumption, and the
deterministic, resumable data order."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch.utils.data import Sampler

from specdec.train.guards import CheckpointWriteError, tensor_bytes, write_failure_message


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write each checkpoint to a temporary file, then rename it into place: a kill mid-write
    never leaves a half-written `last.ckpt`, and a failed write (a full disk) removes its partial
    file, keeps the previous checkpoint and says why in one line. Checkpoints are read with
    `weights_only=True`: a checkpoint file never runs code."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options: Any | None = None) -> None:
        path = Path(path)
        if not isinstance(get_filesystem(str(path)), type(get_filesystem("/"))):
            return super().save_checkpoint(checkpoint, path, storage_options)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        try:
            torch.save(checkpoint, tmp)
            os.replace(tmp, path)
        except (OSError, RuntimeError) as exc:
            tmp.unlink(missing_ok=True)
            raise CheckpointWriteError(write_failure_message(path, exc, tensor_bytes(checkpoint))) from None

    def load_checkpoint(self, path, map_location: Any | None = None, weights_only: bool | None = None) -> dict[str, Any]:
        return super().load_checkpoint(path, map_location=map_location, weights_only=True)


class ResumableCSVLogger(CSVLogger):
    """Lightning's CSV logger, except that a resumed run keeps the history: Lightning's writer
    deletes `metrics.csv` when the folder exists, this one keeps the rows of steps before the
    first step the new run logs (a resumed run starts at its checkpoint's step, so the rows the
    killed run wrote after that checkpoint are replaced; a fresh run starts at 0 and replaces all)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            os.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _HistoryKeepingWriter(log_dir=self.log_dir)
        return self._experiment


class _HistoryKeepingWriter(ExperimentWriter):
    def _check_log_dir_exists(self) -> None:
        self._trimmed = False  # the old rows are trimmed at the first logged step, once it is known

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        if not self._trimmed and step is not None:
            self._keep_rows_before(step)
            self._trimmed = True
        super().log_metrics(metrics_dict, step)

    def _keep_rows_before(self, step: int) -> None:
        """Drop rows logged at `step` or later; adopt the kept rows' columns as the header."""
        if not os.path.isfile(self.metrics_file_path):
            return
        with open(self.metrics_file_path, newline="") as file:
            reader = csv.DictReader(file)
            rows = [row for row in reader if row.get("step") and int(float(row["step"])) < step]
            fieldnames = list(reader.fieldnames or [])
        if not rows:
            os.remove(self.metrics_file_path)
            return
        with open(self.metrics_file_path, "w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        self.metrics_keys = sorted(fieldnames)


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
