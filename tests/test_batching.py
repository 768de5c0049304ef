"""Tests for specdec.data.batching: padding, masks and the train/validation split."""

from __future__ import annotations

import datasets
import pytest
import torch

from specdec.data.batching import pad_collate, split_train_val


def test_pad_collate_right_pads_and_masks():
    batch = pad_collate(
        [
            {"input_ids": [5, 6, 7], "loss_mask": [0, 1, 1]},
            {"input_ids": [8], "loss_mask": [1], "extra": "ignored"},
        ],
        pad_id=2,
    )
    assert set(batch) == {"input_ids", "attention_mask", "loss_mask"}
    assert all(tensor.dtype == torch.long for tensor in batch.values())
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 2, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["loss_mask"].tolist() == [[0, 1, 1], [1, 0, 0]]


def test_pad_collate_rejects_bad_examples():
    with pytest.raises(ValueError, match="empty"):
        pad_collate([], pad_id=0)
    with pytest.raises(ValueError, match="example 1 has 2 input_ids but 1 loss_mask"):
        pad_collate([{"input_ids": [1], "loss_mask": [1]}, {"input_ids": [1, 2], "loss_mask": [1]}], pad_id=0)
    with pytest.raises(KeyError, match="loss_mask"):
        pad_collate([{"input_ids": [1]}], pad_id=0)


def _numbers(n: int) -> datasets.Dataset:
    return datasets.Dataset.from_dict({"x": list(range(n))})


def test_split_sizes_count_and_fraction():
    train, val = split_train_val(_numbers(20), val_size=3, seed=0)
    assert (len(train), len(val)) == (17, 3)
    train, val = split_train_val(_numbers(20), val_size=0.25, seed=0)
    assert (len(train), len(val)) == (15, 5)
    assert sorted(list(train["x"]) + list(val["x"])) == list(range(20))
    train, val = split_train_val(_numbers(20), val_size=0, seed=0)
    assert (len(train), len(val)) == (20, 0)


def test_split_is_deterministic_and_depends_on_seed():
    first = split_train_val(_numbers(50), val_size=10, seed=1)
    again = split_train_val(_numbers(50), val_size=10, seed=1)
    other = split_train_val(_numbers(50), val_size=10, seed=2)
    assert list(first[1]["x"]) == list(again[1]["x"]) and list(first[0]["x"]) == list(again[0]["x"])
    assert list(first[1]["x"]) != list(other[1]["x"])
    assert list(first[1]["x"]) != list(range(10))  # shuffled, not the head of the data


def test_split_must_leave_training_rows():
    with pytest.raises(ValueError, match="leaves none for training"):
        split_train_val(_numbers(5), val_size=5, seed=0)
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        split_train_val(_numbers(5), val_size=1.0, seed=0)
    with pytest.raises(ValueError, match=">= 0"):
        split_train_val(_numbers(5), val_size=-1, seed=0)
