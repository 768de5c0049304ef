"""Committing an accepted path into a transformers `DynamicCache` without recomputing it."""

from __future__ import annotations

import torch


def commit_path(cache, past_len: int, path: list[int]) -> None:
    """Keep the KV entries of the accepted tree nodes `path` (indices into the verified block
    that starts at `past_len`, root = 0), moved into place right after the prefix; drop the rest.
    """
    keep = torch.tensor(path, device=cache.layers[0].keys.device) + past_len
    new_len = past_len + len(path)
    # Step 1: copy the accepted columns to the slots right after the prefix (a no-op for a chain prefix).
    if path != list(range(len(path))):
        for layer in cache.layers:
            layer.keys[:, :, past_len:new_len] = layer.keys[:, :, keep]
            layer.values[:, :, past_len:new_len] = layer.values[:, :, keep]
    # Step 2: cut off everything after them.
    surplus = cache.get_seq_length() - new_len
    if surplus > 0:
        cache.crop(-surplus)
