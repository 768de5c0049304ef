"""Evaluation harness: benchmark a trained draft against its frozen target as ../shared/BENCHMARK.md
prescribes. `benchmark.evaluate` runs MT-Bench-shaped questions (first turn, chat template,
batch 1) through plain greedy decoding with the runtime's cache, Hugging Face `generate`,
Hugging Face prompt lookup and the speculative generator in one process, and returns per-question,
per-category and overall metrics (tau, acceptance by depth, tokens/s, speedups, the lossless
check, ideal speedup); `report` turns that into a table, JSON and a PNG; `cli` is `specdec-eval`.
`specdec.eval` imports only `specdec.runtime` and `specdec.models`.
"""
