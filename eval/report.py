"""Turn an `evaluate()` result into a text table, a JSON file and a PNG figure."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the headless backend)

from specdec.models.base import atomic_write

BASELINES = (("speedup_vs_plain", "plain greedy"), ("speedup_vs_hf_generate", "HF generate"), ("speedup_vs_prompt_lookup", "HF prompt lookup"))
COLUMNS = (
    ("category", 14),
    ("n", 3),
    ("tau", 5),
    ("tok/s", 7),
    ("x plain", 7),
    ("x HF gen", 8),
    ("x PLD", 6),
    ("lossless", 8),
    ("ideal", 6),
    ("meas/ideal", 10),
)


def lossless_banners(result: dict) -> list[str]:
    """One loud line per question whose lossless output differs from plain greedy."""
    return [
        f"LOSSLESS MISMATCH: question {f['question_id']} differs from plain greedy at token {f['first_mismatch']}"
        for f in result.get("lossless_failures", [])
    ]


def format_table(result: dict) -> str:
    """A fixed-width table: one row per category and one overall (medians over questions)."""
    # Step 1: header and one row per summary.
    header = " ".join(name.rjust(width) if i else name.ljust(width) for i, (name, width) in enumerate(COLUMNS))
    rows = [_row(name, summary) for name, summary in result["categories"].items()]
    lines = [header, "-" * len(header), *rows, "-" * len(header), _row("overall", result["overall"])]
    # Step 2: acceptance by depth and the setting in one line each.
    depth = " ".join(f"d{d + 1}={a:.2f}" for d, a in enumerate(result["overall"]["acceptance_by_depth"]))
    setting = result.get("setting", {})
    lines.append(f"acceptance_by_depth: {depth or 'n/a'}")
    lines.append(
        f"speedups are medians of per-question tokens/s ratios; verifier {result['overall'].get('verifier')}; tree {setting.get('tree_size')} nodes, depth {setting.get('tree_depth')}, "
        f"max_new_tokens {setting.get('max_new_tokens')}, temperature {setting.get('temperature')}, {setting.get('device')}, {setting.get('torch_threads')} threads"
    )
    # Step 3: lossless failures above and below the table, impossible to miss.
    banners = lossless_banners(result)
    if banners:
        bar = "!" * max(len(b) for b in banners)
        loud = [bar, *banners, bar]
        lines = loud + lines + loud
    return "\n".join(lines)


def _row(name: str, s: dict) -> str:
    values = (
        name,
        str(s["num_questions"]),
        _fmt(s["mean_accepted_tokens"], "{:.2f}"),
        _fmt(s["tokens_per_s"], "{:.1f}"),
        *(_fmt(s[key], "{:.2f}x") for key, _ in BASELINES),
        "(lossy)" if s.get("lossless") is False else _fmt(s["lossless_match"], "{:.0%}"),
        _fmt(s["ideal_speedup"], "{:.2f}x"),
        _fmt(s["runtime_efficiency"], "{:.0%}"),
    )
    return " ".join(v.rjust(width) if i else v[:width].ljust(width) for i, (v, (_, width)) in enumerate(zip(values, COLUMNS)))


def _fmt(value, pattern: str) -> str:
    return "n/a" if value is None else pattern.format(value)


def write_json(result: dict, path: str | os.PathLike) -> Path:
    """Write `result` as indented JSON, atomically (creating the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2) + "\n"))
    return path


def flat_summary(result: dict) -> dict[str, float]:
    """The overall summary as {metric: number} (acceptance_by_depth as acceptance_by_depth_1..D;
    unmeasured metrics left out; the verifier's name as text, "(lossy)" included), for a draft
    folder's eval_results.json and its model card."""
    flat = {}
    for name, value in result["overall"].items():
        if isinstance(value, list):
            flat.update({f"{name}_{d + 1}": v for d, v in enumerate(value)})
        elif isinstance(value, str):
            flat[name] = value
        elif value is not None:
            flat[name] = float(value)
    return flat


def plot(result: dict, path: str | os.PathLike) -> Path:
    """One PNG, two panels: overall acceptance by draft depth, and median speedup per category
    against each baseline (a dashed line marks 1.0x)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    # Step 1: acceptance by depth.
    acceptance = result["overall"]["acceptance_by_depth"]
    left.bar([str(d + 1) for d in range(len(acceptance))], acceptance, color="tab:blue")
    lossy = "" if result["overall"].get("lossless", True) else " (lossy)"
    left.set(title=f"acceptance by depth (tau = {result['overall']['mean_accepted_tokens']:.2f}){lossy}", xlabel="draft depth", ylabel="fraction of steps accepted", ylim=(0, 1))
    # Step 2: grouped speedup bars per category and overall.
    groups = {**result["categories"], "overall": result["overall"]}
    width = 0.8 / len(BASELINES)
    for i, (key, label) in enumerate(BASELINES):
        values = [math.nan if s[key] is None else s[key] for s in groups.values()]
        right.bar([g + (i - 1) * width for g in range(len(groups))], values, width, label=f"vs {label}")
    right.axhline(1.0, color="black", linestyle="--", linewidth=1)
    right.set_xticks(range(len(groups)), list(groups), rotation=30, ha="right")
    right.set(title="speedup (median over questions)", ylabel="speedup (x)")
    right.legend()
    # Step 3: a lossless failure shows on the figure too.
    if result.get("lossless_failures"):
        fig.suptitle(f"LOSSLESS MISMATCH in {len(result['lossless_failures'])} question(s)", color="red", fontweight="bold")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
