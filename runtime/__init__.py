"""Speculative decoding runtime: draft trees, KV commits, proposers, verification, the decode loop.

Batch size 1. Runs on whatever device the target is on (CPU here, CUDA when present).
`specdec.runtime` imports only `specdec.models`.
"""
