"""Draft models: one file per draft type, the `DraftModel` contract and the registry.

Nothing here knows about training loops, data or the runtime; `specdec.models` imports
none of the other specdec packages.
"""
