"""`specdec-train recipe=judge data.labels=DIR`: train a judge head on the labels `specdec-judge-data`
mined (Judge Decoding, Bachmann et al. 2025; AutoJudge, Garipov et al. 2025). LOSSY by design: the
runtime keeps draft tokens the target rejects when the judge calls them unimportant.

The judge is not a draft, so this recipe has its own schema (`JudgeRecipeConfig`) and job:
1. the labels are split into training and validation by prompt (a prompt's labels never straddle the split);
2. one head per `judge.l2_grid` value is fitted full-batch with L-BFGS on standardised features, on
   the CPU (a few thousand rows; BCE with logits, optional class balancing, an L2 penalty on the weight matrices);
3. the head with the best validation ROC-AUC is kept; its serving threshold is `judge.threshold` or,
   unset, the highest threshold whose validation recall of important tokens reaches `judge.target_recall`;
4. the validation report (ROC-AUC, calibration, threshold table, the training-free p_target baseline)
   goes into `<output_dir>/judge/config.json`, `<output_dir>/judge_report.json` and `judge_report.png`.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Optional

import lightning as L
import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.utils.data import DataLoader, Dataset

from specdec.models.base import atomic_write
from specdec.models.cli_args import AT_LEAST_1
from specdec.models.judge import JudgeConfig, JudgeHead
from specdec.models.judge_data import JudgeData, JudgeDataError, read_judge_data
from specdec.train.config import JUDGE_METHOD, NON_NEGATIVE, POSITIVE, RecipeError, check_rules
from specdec.train.losses import NonFiniteLossError

LBFGS_ITERATIONS = 20
"""Function evaluations per L-BFGS optimizer step (`judge.max_steps` counts the steps)."""
FIXED_THRESHOLDS = [round(0.05 * k, 2) for k in range(1, 20)]
"""Thresholds 0.05, 0.10, ..., 0.95 of the threshold table (beside the quantiles of validation p_important)."""
QUANTILES = FIXED_THRESHOLDS
"""Quantiles of validation p_important that are also rows of the threshold table."""
CALIBRATION_BINS = 10
"""Equal-width p_important bins of the reliability table and the expected calibration error."""
REPORT_NAME, PLOT_NAME, JUDGE_DIR = "judge_report.json", "judge_report.png", "judge"
"""What the job writes under output_dir: the report, its plot, and the judge folder."""


class JudgeTrainingError(ValueError):
    """Labels a judge cannot be trained or validated on (too few prompts, one class only); the message says what to mine."""


JUDGE_ERRORS = (JudgeDataError, JudgeTrainingError)
"""Failures of this job caused by its input, which the CLI reports in one line (exit code 1)."""
METHOD, SECTION, ERRORS = JUDGE_METHOD, "judge", JUDGE_ERRORS
"""This recipe's `method`, its own section and its input errors, as `specdec.train.config.STANDALONE_RECIPES` reads them."""


@dataclass
class JudgeDataSection:
    labels: Optional[str] = None
    """Label folder that `specdec-judge-data` wrote (its out=): shard_*.safetensors and data_card.json. Required."""
    val_fraction: float = 0.2
    """Share of the prompts (each with all its labels) held out for validation: the l2 choice, the threshold and the report."""

    ranges: ClassVar[dict] = {"val_fraction": ("within (0, 1)", lambda v: 0 < v < 1)}


@dataclass
class JudgeOptimSection:
    lr: float = 1.0
    """L-BFGS step size (with the strong-Wolfe line search, 1.0 is the usual value)."""

    ranges: ClassVar[dict] = {"lr": POSITIVE}


@dataclass
class JudgeSection:
    mlp_hidden: int = 0
    """Width of the judge's one hidden layer; 0: logistic regression (a single Linear on the standardised features)."""
    l2_grid: list[float] = field(default_factory=lambda: [1e-4, 1e-3, 1e-2, 1e-1, 1.0])
    """L2 penalties tried, one head each; the head with the best validation ROC-AUC is kept (ties: the first). The loss is mean BCE + l2/2 * squared norm of the weight matrices (biases free)."""
    class_weight: str = "none"
    """none, or balanced: each class weighs N / (2 * its count) in the loss (for labels that are mostly one class)."""
    max_steps: int = 30
    """L-BFGS steps over the whole training split per head (each up to 20 function evaluations; converged heads stop early)."""
    threshold: Optional[float] = None
    """Serving default written into the judge (keep a rejected token when p(important) < threshold); null: the highest threshold whose validation recall of important tokens is >= judge.target_recall."""
    target_recall: float = 0.9
    """Share of the validation's important tokens the chosen threshold must still reject (used when judge.threshold is null)."""

    ranges: ClassVar[dict] = {"mlp_hidden": NON_NEGATIVE, "max_steps": AT_LEAST_1, "threshold": ("within (0, 1)", lambda v: 0 < v < 1), "target_recall": ("within (0, 1]", lambda v: 0 < v <= 1)}
    choices: ClassVar[dict] = {"class_weight": ("none", "balanced")}


@dataclass
class JudgeRecipeConfig:
    method: str = JUDGE_METHOD
    """judge: train a judge head (Judge decoding, LOSSY) on mined labels instead of a draft."""
    output_dir: str = "runs/judge"
    """Where the resolved config, judge/ (the head), judge_report.json and judge_report.png go."""
    seed: int = 0
    """Seed of the prompt split and of the heads' initialisation."""
    data: JudgeDataSection = field(default_factory=JudgeDataSection)
    """The labels and the validation split."""
    optim: JudgeOptimSection = field(default_factory=JudgeOptimSection)
    """The L-BFGS optimizer."""
    judge: JudgeSection = field(default_factory=JudgeSection)
    """The head, its regularisation grid and its serving threshold."""


RECIPE = JudgeRecipeConfig
"""This recipe's schema."""


def check_recipe(config: DictConfig) -> None:
    """Raise RecipeError for a judge recipe that cannot run: values out of range, no usable label folder."""
    sections = {"data": JudgeDataSection, "optim": JudgeOptimSection, "judge": JudgeSection}
    choices = {f"{name}.{key}": rule for name, section in sections.items() for key, rule in getattr(section, "choices", {}).items()}
    ranges = {f"{name}.{key}": rule for name, section in sections.items() for key, rule in getattr(section, "ranges", {}).items()}
    check_rules(config, choices, ranges)
    grid = list(config.judge.l2_grid)
    if not grid or any(not math.isfinite(v) or v < 0 for v in grid):
        raise RecipeError(f"`judge.l2_grid` is {grid}; it must be a non-empty list of finite numbers >= 0, e.g. [1e-4,1e-3,1e-2,1e-1,1.0]")
    labels = config.data.labels
    if labels is None:
        raise RecipeError("`data.labels` is required: the folder `specdec-judge-data` wrote (its out=DIR); mine labels with specdec-judge-data first")
    if not Path(labels).is_dir():
        raise RecipeError(f"`data.labels`: label folder {labels} does not exist: run specdec-judge-data first (out={labels}), or fix the path")


# -- metrics (pure functions of scores and 0/1 labels) --


def average_ranks(scores: torch.Tensor) -> torch.Tensor:
    """1-based ranks of `scores` in ascending order; tied scores share the mean of their ranks."""
    _, inverse, counts = torch.unique(scores.double(), sorted=True, return_inverse=True, return_counts=True)
    last = counts.cumsum(0).double()
    return (last - (counts.double() - 1) / 2)[inverse]


def roc_auc(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Area under the ROC curve of `scores` ranking label-1 rows above label-0 rows (Mann-Whitney U; a tie counts 1/2)."""
    positive = labels.bool()
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if n_pos == 0 or n_neg == 0:
        raise JudgeTrainingError(f"ROC-AUC needs both classes; got {n_pos} positive and {n_neg} negative rows")
    rank_sum = float(average_ranks(scores)[positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def roc_curve(scores: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float]]:
    """(false positive rates, true positive rates) of "label 1 when score >= t" for every distinct score t, from (0, 0) to (1, 1)."""
    # Step 1: rows by descending score; running counts of each class flagged so far.
    order = scores.double().argsort(descending=True)
    ranked, positive = scores.double()[order], labels.bool()[order]
    true_pos, false_pos = positive.cumsum(0).double(), (~positive).cumsum(0).double()
    # Step 2: one point per distinct score, after the last row of its tie group.
    last = torch.ones(len(ranked), dtype=torch.bool)
    last[:-1] = ranked[1:] != ranked[:-1]
    tpr, fpr = true_pos[last] / positive.sum(), false_pos[last] / (~positive).sum()
    return [0.0, *fpr.tolist()], [0.0, *tpr.tolist()]


def reliability_table(p: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> list[dict]:
    """Per equal-width bin [k/bins, (k+1)/bins) of p (the last bin includes 1): rows, mean p, observed share of label 1."""
    index = torch.clamp(torch.floor(p.double() * bins), 0, bins - 1).long()
    rows = []
    for k in range(bins):
        inside = index == k
        count = int(inside.sum())
        rows.append({
            "low": k / bins,
            "high": (k + 1) / bins,
            "count": count,
            "mean_p": float(p[inside].double().mean()) if count else None,
            "observed": float(labels[inside].double().mean()) if count else None,
        })
    return rows


def expected_calibration_error(p: torch.Tensor, labels: torch.Tensor, bins: int = CALIBRATION_BINS) -> float:
    """Sum over the reliability bins of (share of rows in the bin) * |mean p - observed share of label 1|."""
    table = reliability_table(p, labels, bins)
    return sum(row["count"] / len(p) * abs(row["mean_p"] - row["observed"]) for row in table if row["count"])


def threshold_row(p: torch.Tensor, important: torch.Tensor, threshold: float) -> dict:
    """What serving at `threshold` does on labelled mismatches: a mismatch is accepted when p(important) < threshold.

    accepted_share: mismatches accepted; false_accept_rate: important mismatches accepted; unimportant_accepted:
    unimportant mismatches accepted; precision / recall: of "important" (p >= threshold) for the important class."""
    important = important.bool()
    accepted = p < threshold
    flagged = ~accepted
    n_flagged = int(flagged.sum())
    false_accept = float((accepted & important).sum() / important.sum())
    return {
        "threshold": float(threshold),
        "accepted_share": float(accepted.double().mean()),
        "false_accept_rate": false_accept,
        "unimportant_accepted": float((accepted & ~important).sum() / (~important).sum()),
        "precision": float((flagged & important).sum()) / n_flagged if n_flagged else None,
        "recall": 1.0 - false_accept,
    }


def threshold_table(p: torch.Tensor, important: torch.Tensor) -> list[dict]:
    """`threshold_row` at the QUANTILES of validation p (`from`: "quantile q") and at FIXED_THRESHOLDS (`from`: "fixed"), by threshold."""
    quantiles = torch.quantile(p.double(), torch.tensor(QUANTILES, dtype=torch.float64)).tolist()
    rows = [{**threshold_row(p, important, t), "from": f"quantile {q:g}"} for q, t in zip(QUANTILES, quantiles)]
    rows += [{**threshold_row(p, important, t), "from": "fixed"} for t in FIXED_THRESHOLDS]
    return sorted(rows, key=lambda row: row["threshold"])


def recall_threshold(p: torch.Tensor, important: torch.Tensor, target_recall: float) -> float:
    """The highest threshold t at which at least `target_recall` of the important rows have p >= t (are still rejected)."""
    ranked = p[important.bool()].sort(descending=True).values
    return float(ranked[math.ceil(target_recall * len(ranked)) - 1])


# -- data --


def split_by_prompt(prompt_index: torch.Tensor, val_fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(train mask, validation mask) over the label rows: a seeded share `val_fraction` of the prompts (at least one, never all) goes to validation whole."""
    prompts = torch.unique(prompt_index)
    if len(prompts) < 2:
        raise JudgeTrainingError(f"the labels come from {len(prompts)} prompt(s); a validation split by prompt needs at least 2: mine more prompts with specdec-judge-data")
    order = prompts[torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed))]
    n_val = min(max(1, round(val_fraction * len(prompts))), len(prompts) - 1)
    val = torch.isin(prompt_index, order[:n_val])
    return ~val, val


def check_both_classes(important: torch.Tensor, prompt_index: torch.Tensor, split: str) -> None:
    """Raise JudgeTrainingError when the `split` rows hold only one class."""
    n_important = int(important.sum())
    if n_important == 0 or n_important == len(important):
        only = "important" if n_important else "unimportant"
        raise JudgeTrainingError(
            f"the {split} split ({len(important)} labels from {len(torch.unique(prompt_index))} prompts) holds only {only} labels: "
            "mine more prompts with specdec-judge-data (or change data.val_fraction / seed)"
        )


def check_finite_features(data: JudgeData, folder: str) -> None:
    """Raise JudgeDataError when some feature rows hold NaN or infinite values."""
    bad = ~torch.isfinite(data.features).all(1)
    if bad.any():
        raise JudgeDataError(f"{int(bad.sum())} of {len(bad)} label rows in {folder} have NaN or infinite features: mine them again with specdec-judge-data")


def row_weights(important: torch.Tensor, class_weight: str) -> torch.Tensor:
    """Per-row loss weights: ones (none), or N / (2 * count of the row's class) (balanced)."""
    if class_weight == "none":
        return torch.ones(len(important))
    counts = torch.bincount(important.long(), minlength=2).double()
    return (len(important) / (2 * counts))[important.long()].float()


# -- training --


def judge_loss(logits: torch.Tensor, important: torch.Tensor, weights: torch.Tensor, matrices: list[torch.Tensor], l2: float) -> torch.Tensor:
    """Mean weighted BCE with logits + l2/2 * the squared norm of the weight `matrices`."""
    bce = F.binary_cross_entropy_with_logits(logits, important.float(), weight=weights)
    return bce + 0.5 * l2 * sum((m**2).sum() for m in matrices)


def weight_matrices(head: JudgeHead) -> list[torch.Tensor]:
    """The Linear weights of a head (what the L2 penalty covers; biases and the standardisation are not penalised)."""
    return [m.weight for m in head.layers if isinstance(m, nn.Linear)]


class FullBatch(Dataset):
    """The whole training split as one batch, `steps` times (one L-BFGS step each)."""

    def __init__(self, tensors: tuple[torch.Tensor, ...], steps: int):
        self.tensors, self.steps = tensors, steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.tensors


class JudgeModule(L.LightningModule):
    """Fits one `JudgeHead` by full-batch L-BFGS on `judge_loss`."""

    def __init__(self, head: JudgeHead, l2: float, lr: float):
        super().__init__()
        self.head, self.l2, self.lr = head, l2, lr
        self.last_loss = float("nan")

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        features, important, weights = batch
        loss = judge_loss(self.head(features), important, weights, weight_matrices(self.head), self.l2)
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"the judge's loss is {loss.item()} at L-BFGS step {self.global_step} (judge.l2 {self.l2:g}); nothing was written. "
                "Lower optim.lr or check the labels (mine them again with specdec-judge-data)."
            )
        self.last_loss = float(loss.detach())
        return loss

    def configure_optimizers(self):
        return torch.optim.LBFGS(self.head.parameters(), lr=self.lr, max_iter=LBFGS_ITERATIONS, line_search_fn="strong_wolfe")


@contextmanager
def quiet_lightning():
    """Silence Lightning's per-Trainer banners and its few-workers advice (one Trainer per grid value, tiny data in memory)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)` is deprecated.*")  # Lightning's batch flattening on newer torch
            yield
    finally:
        logger.setLevel(level)


def fit_head(cfg: DictConfig, features: torch.Tensor, important: torch.Tensor, weights: torch.Tensor, l2: float, callbacks: list | tuple = ()) -> tuple[JudgeHead, float]:
    """(a head fitted with penalty `l2` on the training rows, its final training loss); every head starts from the same seeded initialisation."""
    L.seed_everything(cfg.seed, verbose=False)
    head = JudgeHead(JudgeConfig(feature_size=features.shape[1], mlp_hidden=cfg.judge.mlp_hidden))
    head.set_standardisation(features)
    module = JudgeModule(head, l2, cfg.optim.lr)
    loader = DataLoader(FullBatch((features, important, weights), cfg.judge.max_steps), batch_size=None)
    with quiet_lightning():
        trainer = L.Trainer(
            accelerator="cpu", devices=1, max_steps=cfg.judge.max_steps, max_epochs=1, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False, callbacks=list(callbacks), default_root_dir=cfg.output_dir,
        )
        trainer.fit(module, train_dataloaders=loader)
    return head.eval(), module.last_loss


def run_recipe(cfg: DictConfig, callbacks: list | tuple = ()) -> Path:
    """`train_judge` as `specdec-train` runs a standalone recipe; returns the judge folder."""
    return train_judge(cfg, callbacks).judge_dir


@dataclass
class JudgeResult:
    judge_dir: Path
    """The judge folder written (`load_judge` reads it)."""
    head: JudgeHead
    """The head kept (the best validation ROC-AUC of the grid), with its serving threshold."""
    report: dict
    """The validation report (also in judge_report.json and the judge's config.json)."""


def train_judge(cfg: DictConfig, callbacks: list | tuple = ()) -> JudgeResult:
    """Run the judge recipe `cfg` (validated by `load_recipe`); `callbacks` join every head's Trainer."""
    # Step 1: output folder with the resolved config; the labels, split by prompt.
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(out / "config.yaml", lambda p: Path(p).write_text(OmegaConf.to_yaml(cfg)))
    data = read_judge_data(cfg.data.labels)
    check_finite_features(data, cfg.data.labels)
    train, val = split_by_prompt(data.prompt_index, cfg.data.val_fraction, cfg.seed)
    for mask, split in ((train, "training"), (val, "validation")):
        check_both_classes(data.important[mask], data.prompt_index[mask], split)
    x_train, y_train, x_val, y_val = data.features[train], data.important[train], data.features[val], data.important[val]
    weights = row_weights(y_train, cfg.judge.class_weight)
    # Step 2: one head per l2 value; keep the best validation ROC-AUC (the first on ties).
    grid, best = [], None
    for l2 in cfg.judge.l2_grid:
        head, loss = fit_head(cfg, x_train, y_train, weights, l2, callbacks)
        auc = roc_auc(head.p_important(x_val), y_val)
        grid.append({"l2": float(l2), "val_roc_auc": auc, "train_loss": loss})
        print(f"judge.l2 {l2:g}: validation ROC-AUC {auc:.4f} (training loss {loss:.4f})", flush=True)
        if best is None or auc > best[1]:
            best = (head, auc, float(l2))
    head, _, chosen_l2 = best
    # Step 3: the serving threshold, then the report on the validation rows.
    p_val = head.p_important(x_val)
    threshold = cfg.judge.threshold if cfg.judge.threshold is not None else recall_threshold(p_val, y_val, cfg.judge.target_recall)
    head.config.threshold = float(threshold)
    head.config.target = target_facts(data.card, data.features.shape[1])
    records_val = [r for r, keep in zip(data.records, val.tolist()) if keep]
    report = validation_report(cfg, p_val, y_val, records_val, threshold) | {
        "counts": split_counts(data, train, val),
        "l2_grid": grid,
        "chosen_l2": chosen_l2,
    }
    # Step 4: the judge folder (metrics in its config.json, a model card), the report and its plot.
    judge_dir = head.save_pretrained(out / JUDGE_DIR, extra={"metrics": report, "labels": labels_facts(data.card, cfg.data.labels)})
    atomic_write(judge_dir / "README.md", lambda p: Path(p).write_text(judge_card(report, head.config, cfg)))
    atomic_write(out / REPORT_NAME, lambda p: Path(p).write_text(json.dumps(report, indent=2) + "\n"))
    plot_report(report, p_val, y_val, records_val, out / PLOT_NAME)
    print(f"judge written to {judge_dir} (LOSSY): validation ROC-AUC {report['val_roc_auc']:.4f} at judge.l2 {chosen_l2:g}, threshold {threshold:.4g}", flush=True)
    return JudgeResult(judge_dir, head, report)


# -- report --


def target_facts(card: dict, feature_size: int) -> dict:
    """The target the labels' features came from, as the data card's settings name it (`target`, `target_id`), with its hidden size."""
    settings = card.get("settings") or {}
    facts = {"name_or_path": settings["target"]} if isinstance(settings.get("target"), str) else {}
    facts |= {"target_id": settings["target_id"]} if settings.get("target_id") else {}
    return facts | {"hidden_size": feature_size}


def labels_facts(card: dict, folder: str) -> dict:
    """What the judge was trained on: the label folder, its mining settings (prompts file and slice,
    draft, checker) and counts. specdec-eval reads it to refuse questions the judge has seen."""
    return {"folder": str(Path(folder).resolve()), "settings": card.get("settings") or {}, "counts": card.get("counts") or {}}


def split_counts(data: JudgeData, train: torch.Tensor, val: torch.Tensor) -> dict:
    """Prompts, labels and important labels of each split."""
    def counts(mask: torch.Tensor) -> dict:
        return {"prompts": len(torch.unique(data.prompt_index[mask])), "labels": int(mask.sum()), "important": int(data.important[mask].sum())}

    return {"train": counts(train), "validation": counts(val)}


def p_target_scores(records: list[dict]) -> torch.Tensor | None:
    """Importance scores of the training-free baseline, 1 - p_target of the draft token; None unless every record has a finite p_target."""
    values = [r.get("p_target") for r in records]
    if not values or not all(isinstance(v, (int, float)) and math.isfinite(v) for v in values):
        return None
    return 1.0 - torch.tensor(values, dtype=torch.float64)


def search_mask(records: list[dict]) -> torch.Tensor:
    """Rows whose label came from a search (rule `search`), not from the low-probability floor."""
    return torch.tensor([r.get("rule") == "search" for r in records], dtype=torch.bool)


def auc_or_none(scores: torch.Tensor, labels: torch.Tensor) -> float | None:
    """ROC-AUC, or None when the rows hold one class only."""
    n_important = int(labels.sum())
    return roc_auc(scores, labels) if 0 < n_important < len(labels) else None


def validation_report(cfg: DictConfig, p_val: torch.Tensor, y_val: torch.Tensor, records: list[dict], threshold: float) -> dict:
    """ROC-AUC (all rows and searched rows only), calibration, threshold table and the serving threshold on the validation rows, with the p_target baseline."""
    searched = search_mask(records)
    baseline = p_target_scores(records)
    rule = "judge.threshold" if cfg.judge.threshold is not None else f"highest threshold with validation recall of important >= judge.target_recall {cfg.judge.target_recall:g}"
    return {
        "lossy": True,
        "labels": str(cfg.data.labels),
        "val_roc_auc": roc_auc(p_val, y_val),
        "val_roc_auc_search_rows": auc_or_none(p_val[searched], y_val[searched]),
        "ece": expected_calibration_error(p_val, y_val),
        "reliability": reliability_table(p_val, y_val),
        "threshold": threshold_row(p_val, y_val, threshold) | {"rule": rule},
        "thresholds": threshold_table(p_val, y_val),
        "baseline_auc": None if baseline is None else {
            "score": "1 - p_target (the target's probability of the draft token)",
            "val_roc_auc": roc_auc(baseline, y_val),
            "val_roc_auc_search_rows": auc_or_none(baseline[searched], y_val[searched]),
        },
    }


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def judge_card(report: dict, config: JudgeConfig, cfg: DictConfig) -> str:
    """The judge folder's README.md: what it is (LOSSY), what it was trained on, its validation figures."""
    counts, chosen = report["counts"], report["threshold"]
    baseline = report["baseline_auc"]
    model = f"an MLP with {config.mlp_hidden} hidden units" if config.mlp_hidden else "logistic regression"
    lines = [
        "# Judge head (LOSSY)",
        "",
        "A judge for Judge decoding (Bachmann et al. 2025), trained on labels mined as in AutoJudge (Garipov et al. 2025).",
        "It is **LOSSY**: the runtime keeps a draft token the target rejects when p(important) < threshold, so the output is",
        "not the target's own decoding. Use it with `verifier=judge judge=<this folder>`.",
        "",
        f"- model: {model} on the target's standardised last hidden state ({config.feature_size} features); judge.l2 {report['chosen_l2']:g}",
        f"- target: {config.target.get('name_or_path', 'see the label folder data card')}",
        f"- labels: {report['labels']}: training {counts['train']['labels']} ({counts['train']['important']} important) from {counts['train']['prompts']} prompts, "
        f"validation {counts['validation']['labels']} ({counts['validation']['important']} important) from {counts['validation']['prompts']} prompts",
        f"- validation ROC-AUC {_number(report['val_roc_auc'])} (searched labels only: {_number(report['val_roc_auc_search_rows'])}); "
        f"training-free baseline 1 - p_target: {_number(baseline and baseline['val_roc_auc'])}",
        f"- expected calibration error ({CALIBRATION_BINS} bins): {_number(report['ece'])}",
        f"- serving threshold {config.threshold:.4g} ({chosen['rule']}): accepts {chosen['accepted_share']:.1%} of validation mismatches, "
        f"{chosen['false_accept_rate']:.1%} of the important ones (false accepts)",
        "",
        f"Trained with `specdec-train recipe=judge data.labels={cfg.data.labels}`; the full report (grid, reliability and threshold tables) is",
        "under `metrics` in config.json.",
    ]
    return "\n".join(lines) + "\n"


def plot_report(report: dict, p_val: torch.Tensor, y_val: torch.Tensor, records: list[dict], path: Path) -> None:
    """ROC curves (judge, and the p_target baseline when the records have it) beside the reliability diagram, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc, rel) = plt.subplots(1, 2, figsize=(10, 4.5))
    roc.plot(*roc_curve(p_val, y_val), label=f"judge (AUC {report['val_roc_auc']:.3f})")
    baseline = p_target_scores(records)
    if baseline is not None:
        roc.plot(*roc_curve(baseline, y_val), label=f"1 - p_target (AUC {report['baseline_auc']['val_roc_auc']:.3f})")
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":")
    roc.set(xlabel="unimportant mismatches rejected (FPR)", ylabel="important mismatches rejected (TPR)", title="validation ROC")
    roc.legend(loc="lower right")
    rows = [row for row in report["reliability"] if row["count"]]
    rel.plot([0, 1], [0, 1], color="grey", linestyle=":")
    rel.plot([r["mean_p"] for r in rows], [r["observed"] for r in rows], marker="o")
    rel.set(xlabel="mean p(important) in bin", ylabel="share important", title=f"reliability (ECE {report['ece']:.3f})", xlim=(0, 1), ylim=(0, 1))
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))
    plt.close(fig)
