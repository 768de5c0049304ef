"""Speculative decoding runtime: draft trees, KV commits, proposers, verification, the decode loop.

Batch size 1. Runs on whatever device the target is on (CPU here, CUDA when present).
`specdec.runtime` imports only `specdec.models`.

Importing the package imports every module named `*_proposer.py` or `*_verifier.py` in it, so each
method's proposer (and any verifier beyond greedy / sampling / typical) registers itself: a new
method is a new file, with no list to keep in sync.
"""

import importlib
import pkgutil

PLUGIN_SUFFIXES = ("_proposer", "_verifier")
"""Module name endings imported with the package (their classes register themselves)."""

for _module in pkgutil.iter_modules(__path__):
    if _module.name.endswith(PLUGIN_SUFFIXES):
        importlib.import_module(f"{__name__}.{_module.name}")
