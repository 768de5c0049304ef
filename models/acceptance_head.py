"""An acceptance head: per drafted node, the probability that the target accepts it given that its
parent was accepted (learned draft length; SpecDec++, C2T and DSpark's confidence head). The runtime
multiplies it along a node's path and drops the nodes whose product falls below a threshold
(`specdec.runtime.draft_length`), so each step verifies as many draft tokens as are likely to pay.

The head reads cheap features every draft type can give, computed from the draft's next-token
distributions (`node_features`): the draft probability of the node's token, the entropy and the top
probability of the distribution it was drawn from, its depth, its rank among its siblings and the
cumulative log-probability of its path. It is trained from the target's verification of the
drafter's own proposals (`specdec-acceptance-data`, then `specdec.train.acceptance`).

An acceptance-head folder holds `config.json` (`AcceptanceHeadConfig` plus the draft it was
recorded with and the training metrics) and `model.safetensors` (standardisation and layers).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specdec.models.base import DraftMismatchError
from specdec.models.small_head import SmallHead

ACCEPTANCE_TYPE = "acceptance_head"
"""Value of `config.json`'s `draft_type` in an acceptance-head folder (not a draft: `load_draft` refuses it)."""
FEATURES = ("log_draft_prob", "parent_entropy", "parent_top_prob", "depth", "rank", "path_log_prob")
"""The per-node features `node_features` computes, in column order."""
LOG_FLOOR = math.log(1e-10)
"""log-probability given to a token its parent's distribution does not cover (a zero row or a zero entry)."""


@dataclass
class AcceptanceHeadConfig:
    """Shape and serving default of an acceptance head."""

    hidden: int = 32
    """Width of the two hidden layers of the MLP (features -> hidden -> hidden -> 1)."""
    threshold: float = 0.3
    """Serving default: a node is verified while the product of predicted acceptances along its path is at least this."""
    features: tuple[str, ...] = FEATURES
    """Feature names in column order (checked on load against `FEATURES`)."""
    draft: dict = field(default_factory=dict)
    """The draft whose proposals were recorded (`draft_type`, `path`)."""


class AcceptanceHead(SmallHead):
    """Standardised node features [.., len(FEATURES)] -> the logit of p(accepted | parent accepted)."""

    head_type, config_class = ACCEPTANCE_TYPE, AcceptanceHeadConfig
    what, trained_by, option = "an acceptance head", "specdec-train recipe=acceptance (its head/)", "acceptance_head=DIR"

    def __init__(self, config: AcceptanceHeadConfig):
        super().__init__()
        self.config = config
        f, h = len(FEATURES), config.hidden
        self.add_standardisation(f)
        self.layers = nn.Sequential(nn.Linear(f, h), nn.SiLU(), nn.Linear(h, h), nn.SiLU(), nn.Linear(h, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """[.., F] -> [..] logits."""
        return self.layers(self.standardise(features)).squeeze(-1)

    @torch.no_grad()
    def acceptance(self, features: torch.Tensor) -> torch.Tensor:
        """[.., F] -> [..] predicted acceptance in [0, 1]."""
        return torch.sigmoid(self(features))

    @classmethod
    def check_config(cls, config: dict, path: Path) -> None:
        if tuple(config.get("features") or ()) != FEATURES:
            raise DraftMismatchError(f"{path} reads features {config.get('features')}, this specdec computes {list(FEATURES)}: train the head again with this version")


def node_features(parents: tuple[int, ...], ranks: tuple[int, ...], depths: tuple[int, ...], tokens: torch.Tensor, draft_dists: torch.Tensor) -> torch.Tensor:
    """[size, len(FEATURES)] features of every non-root node of a tree (`parents`, `ranks`, `depths` of
    its size + 1 nodes, root first), from its node `tokens` [size] and the draft's distribution after
    every node `draft_dists` [size + 1, V] (what each node's children were drawn from)."""
    # Step 1: the parent's distribution of every node, and the node token's probability under it.
    parent = torch.tensor(parents[1:], device=draft_dists.device)
    rows = draft_dists.float()[parent]
    tokens = torch.as_tensor(tokens, device=draft_dists.device).long()
    log_q = rows.gather(1, tokens[:, None])[:, 0].clamp_min(1e-10).log()
    # Step 2: the parent distribution's entropy and top probability.
    entropy = -(rows * rows.clamp_min(1e-10).log()).sum(-1)
    top = rows.max(-1).values
    # Step 3: the cumulative log-probability down each path: the node-to-ancestor matrix (built from
    # the host-side parents, so nothing waits on the device) times the per-node log-probabilities.
    path = path_matrix(parents).to(draft_dists.device) @ log_q
    columns = [log_q, entropy, top, torch.tensor(depths[1:]), torch.tensor(ranks[1:]), path]
    return torch.stack([c.to(draft_dists.device, torch.float32) for c in columns], dim=-1)


def path_matrix(parents: tuple[int, ...]) -> torch.Tensor:
    """Float [size, size] over the non-root nodes of a tree (root first in `parents`, a parent before
    its children): entry (i, j) is 1 when node j + 1 is node i + 1 or one of its ancestors."""
    size = len(parents) - 1
    matrix = torch.zeros(size + 1, size + 1)
    for node in range(1, size + 1):
        matrix[node] = matrix[parents[node]]
        matrix[node, node] = 1.0
    return matrix[1:, 1:]


def read_acceptance_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The config.json of an acceptance-head folder; a missing folder or one that is not an acceptance head raises a clear error."""
    return AcceptanceHead.read_config(directory)


def load_acceptance_head(directory: str | os.PathLike) -> AcceptanceHead:
    """Rebuild the head `AcceptanceHead.save_pretrained` wrote (no pickles are read)."""
    return AcceptanceHead.from_pretrained(directory)
