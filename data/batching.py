"""Batch tokenized examples for training and split a data set into train and validation parts."""

from __future__ import annotations

import datasets
import numpy as np
import torch


def pad_collate(examples: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad a list of tokenized examples into a batch.

    Args:
        examples: dicts with ``input_ids`` and ``loss_mask`` (sequences of equal length per
            example); other keys are ignored.
        pad_id: the token id written into padded positions.

    Returns:
        LongTensors of shape ``(batch, longest)``: ``input_ids`` (``pad_id`` on pads),
        ``attention_mask`` (1 on real tokens, 0 on pads) and ``loss_mask`` (0 on pads).
    """
    if not examples:
        raise ValueError("pad_collate got an empty list of examples")
    # Step 1: check every example and find the longest.
    for index, example in enumerate(examples):
        if "input_ids" not in example or "loss_mask" not in example:
            raise KeyError(f"example {index} needs 'input_ids' and 'loss_mask', has {sorted(example)}")
        if len(example["input_ids"]) != len(example["loss_mask"]):
            raise ValueError(
                f"example {index} has {len(example['input_ids'])} input_ids but "
                f"{len(example['loss_mask'])} loss_mask values"
            )
    width = max(len(example["input_ids"]) for example in examples)
    # Step 2: fill padded tensors row by row.
    batch = {
        "input_ids": torch.full((len(examples), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(examples), width), dtype=torch.long),
        "loss_mask": torch.zeros((len(examples), width), dtype=torch.long),
    }
    for row, example in enumerate(examples):
        length = len(example["input_ids"])
        batch["input_ids"][row, :length] = torch.as_tensor(example["input_ids"], dtype=torch.long)
        batch["attention_mask"][row, :length] = 1
        batch["loss_mask"][row, :length] = torch.as_tensor(example["loss_mask"], dtype=torch.long)
    return batch


def split_train_val(
    dataset: datasets.Dataset, val_size: int | float, seed: int
) -> tuple[datasets.Dataset, datasets.Dataset]:
    """Split ``dataset`` into (train, validation) deterministically.

    Args:
        dataset: the rows to split.
        val_size: validation rows as a count (int) or as a fraction in [0, 1) (float);
            fractions round to the nearest row count. 0 gives an empty validation set.
        seed: the same seed and data set always give the same split.

    Returns:
        ``(train, val)``; each keeps the original row order.

    Raises:
        ValueError: if ``val_size`` is negative, or leaves no rows for training.
    """
    # Step 1: turn val_size into a row count.
    total = len(dataset)
    if isinstance(val_size, float):
        if not 0.0 <= val_size < 1.0:
            raise ValueError(f"a fractional val_size must be in [0, 1), got {val_size}")
        val_rows = round(total * val_size)
    else:
        val_rows = int(val_size)
    if val_rows < 0:
        raise ValueError(f"val_size must be >= 0, got {val_size}")
    if val_rows >= total:
        raise ValueError(
            f"val_size={val_size} takes {val_rows} of the {total} rows and leaves none for training; "
            "use a smaller val_size or more data"
        )
    # Step 2: draw the validation rows with a seeded permutation.
    order = np.random.default_rng(seed).permutation(total)
    val_indices = np.sort(order[:val_rows])
    train_indices = np.sort(order[val_rows:])
    return dataset.select(train_indices), dataset.select(val_indices)


def label_token_counts(dataset: datasets.Dataset, vocab_size: int) -> torch.Tensor:
    """[vocab_size] how often each token is a trained-on (loss-masked) token of `dataset`."""
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for ids, mask in zip(dataset["input_ids"], dataset["loss_mask"]):
        ids = torch.as_tensor(ids)
        counts += torch.bincount(ids[torch.as_tensor(mask).bool()], minlength=vocab_size)[:vocab_size]
    return counts
