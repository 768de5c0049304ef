"""Engine round trip: specdec's exports loaded and decoded greedily by a real serving engine.

    .venv/bin/python scripts/check_engines.py [--medusa DRAFT_DIR] [--eagle3 DRAFT_DIR] [--work DIR]

Half 1 runs here, in the project venv: the drafts (trained briefly with the shipped recipes
`medusa1` and `eagle3` unless passed as folders), their exports with `specdec-export`
(Medusa: `vllm` and `medusa`; EAGLE-3: `speculators` and `sglang`), and, on the first MT-Bench
question of each category, specdec's own plain greedy outputs and its runtime's acceptance with
the chain vLLM drafts (one token per head or step).
Half 2 runs in the engines venv (vLLM's CPU build from PyPI and `speculators`, made by
scripts/engines_venv.sh when missing), one subprocess per job so one failure cannot hide the
others: vLLM without speculation, vLLM with each export as the draft and the target folder as the
verifier (greedy, the same prompt token ids), and speculators' `SpeculatorModel.from_pretrained`
on the speculators export. Everything lands in bench/engines.json (README, Engines).

Too slow for CI. Measured on the shared 2-core machine (load about 3): installing the engines venv
2.5 min; training both drafts about 40 min (13 of them the self-distillation both recipes share,
cached afterwards); exports, specdec's runtime and the six engine jobs 20 min; a rerun reuses the
drafts left in WORK.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_WORK = Path(os.environ.get("SPECDEC_CACHE", Path.home() / ".cache" / "specdec")) / "engines"
DEFAULT_ENGINES_VENV = Path(os.environ.get("SPECDEC_ENGINES_VENV", Path.home() / ".cache" / "specdec" / "engines-venv"))
TRAIN = {
    "medusa": ["recipe=medusa1"],
    "eagle3": ["recipe=eagle3", "trainer.max_steps=100", "trainer.val_every_n_steps=50", "trainer.checkpoint_every_n_steps=50"],
}
"""specdec-train arguments of the drafts trained when none is passed (the shipped recipes, small budgets)."""
ROWS = (("medusa", "vllm", "medusa"), ("medusa", "medusa", "medusa"), ("eagle3", "speculators", "eagle3"), ("eagle3", "sglang", "eagle3"))
"""(draft, specdec-export format, vLLM speculative method) of every vLLM row."""
ENGINE_ENV = {"VLLM_CPU_KVCACHE_SPACE": "2", "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
"""Engine-process environment (kept when already set): a 2 GiB KV cache, the engine core in the
calling process (its errors surface there), no network."""
MAX_MODEL_LEN = 1024
JOB_TIMEOUT_S = 1200
HUB_COMMIT = "0" * 40
"""Commit name of the offline Hub cache entry that maps the target's Hub id to its local folder."""


# ----------------------------------------------------------------------------------------------
# Half 2: engine jobs (engines venv; imports nothing from specdec)
# ----------------------------------------------------------------------------------------------


def run_engine_job(job_path: Path) -> None:
    """Run the job described in `job_path` and write its result JSON to job["result"]."""
    job = json.loads(job_path.read_text())
    for key, value in ENGINE_ENV.items():
        os.environ.setdefault(key, value)
    if job.get("hub_cache"):
        os.environ["HF_HUB_CACHE"] = job["hub_cache"]
    result = {"engine_versions": engine_versions()}
    started = time.perf_counter()
    result.update(vllm_job(job) if job["kind"] == "vllm" else speculators_job(job))
    result["seconds"] = round(time.perf_counter() - started, 1)
    Path(job["result"]).write_text(json.dumps(result, indent=1) + "\n")


def engine_versions() -> dict:
    """Versions of the packages that matter in the engines venv."""
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ("vllm-cpu", "speculators", "torch", "transformers"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


def vllm_job(job: dict) -> dict:
    """Load the target (with the export as its draft when the job names one), decode the prompts greedily."""
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    # Step 1: load; a refusal is the row's answer.
    try:
        llm = LLM(
            model=job["target_dir"],
            dtype="float32",
            max_model_len=MAX_MODEL_LEN,
            enforce_eager=True,
            disable_log_stats=False,
            seed=0,
            speculative_config=job.get("speculative_config"),
        )
    except Exception as exc:  # noqa: BLE001 - whatever vLLM raises is what the row records
        return {"loads": False, "error": one_line(exc)}
    # Step 2: greedy decoding of the same prompt token ids the runtime used.
    try:
        outputs = llm.generate([TokensPrompt(prompt_token_ids=ids) for ids in job["prompts"]], SamplingParams(temperature=0.0, max_tokens=job["max_new_tokens"]), use_tqdm=False)
    except Exception as exc:  # noqa: BLE001
        return {"loads": True, "decodes": False, "error": one_line(exc)}
    return {"loads": True, "decodes": True, "tokens": [list(o.outputs[0].token_ids) for o in outputs], "spec_decode": spec_decode_metrics(llm.get_metrics())}


def spec_decode_metrics(metrics) -> dict | None:
    """vLLM's speculative-decoding counters (vllm/v1/spec_decode/metrics.py) and the mean acceptance
    length it logs: 1 + accepted tokens / drafts (the bonus token counted), None without speculation."""
    values = {m.name: getattr(m, "value", getattr(m, "values", None)) for m in metrics if m.name.startswith("vllm:spec_decode")}
    drafts = values.get("vllm:spec_decode_num_drafts")
    if not drafts:
        return None
    accepted = values["vllm:spec_decode_num_accepted_tokens"]
    per_position = values.get("vllm:spec_decode_num_accepted_tokens_per_pos") or []
    return {
        "num_drafts": drafts,
        "num_draft_tokens": values.get("vllm:spec_decode_num_draft_tokens"),
        "num_accepted_tokens": accepted,
        "mean_acceptance_length": 1 + accepted / drafts,
        "acceptance_by_position": [count / drafts for count in per_position],
    }


def speculators_job(job: dict) -> dict:
    """`SpeculatorModel.from_pretrained` on the export; every tensor of its weights file must arrive unchanged."""
    import torch
    from safetensors.torch import load_file
    from speculators import SpeculatorModel

    # Step 1: load (the verifier named in config.json resolves through the offline Hub cache).
    try:
        model = SpeculatorModel.from_pretrained(job["export_dir"])
    except Exception as exc:  # noqa: BLE001
        return {"loads": False, "error": one_line(exc)}
    # Step 2: the loaded parameters against the file.
    state = model.state_dict()
    saved = load_file(str(Path(job["export_dir"]) / "model.safetensors"))
    missing = sorted(k for k in saved if k not in state)
    differ = sorted(k for k in saved if k in state and not torch.equal(state[k].to(saved[k].dtype), saved[k]))
    error = f"tensors not loaded: {missing[:5]}; loaded with other values: {differ[:5]}" if missing or differ else None
    return {"loads": error is None, "error": error, "class": type(model).__name__, "tensors_in_file": len(saved), "parameters": sum(p.numel() for p in model.parameters())}


def one_line(exc: BaseException) -> str:
    """`Type: message`, the message's lines joined (vLLM's validation errors span several)."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())
    return f"{type(exc).__name__}: {text}"[:2000]


# ----------------------------------------------------------------------------------------------
# Half 1: drafts, exports, specdec's runtime (project venv)
# ----------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    """Both halves; writes the report and returns 0 when every row passed, else 1."""
    args = parse_args(argv)
    if args.engine_job:
        run_engine_job(args.engine_job)
        return 0
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    # Step 1: the engines venv and the drafts.
    engines_python = ensure_engines_venv(args.engines_venv)
    drafts, origins = {}, {}
    for kind, passed in (("medusa", args.medusa), ("eagle3", args.eagle3)):
        drafts[kind], origins[kind] = (passed, "passed") if passed else train_draft(kind, args.work)
    timings["drafts_s"] = time.perf_counter() - clock
    # Step 2: the exports.
    exports = {(kind, fmt): export(drafts[kind], fmt, args.work / "exports" / f"{kind}-{fmt}") for kind, fmt, _ in ROWS}
    timings["exports_s"] = time.perf_counter() - clock - sum(timings.values())
    # Step 3: specdec's runtime on the prompts.
    ours = measure_specdec(drafts, args.questions, args.max_new_tokens, args.eagle_tokens)
    timings["specdec_runtime_s"] = time.perf_counter() - clock - sum(timings.values())
    # Step 4: the engine jobs, one process each.
    jobs = engine_jobs(ours, exports, args.work)
    results = {name: run_job(engines_python, job, args.work / "jobs" / name) for name, job in jobs.items()}
    timings["engines_s"] = time.perf_counter() - clock - sum(timings.values())
    # Step 5: the report.
    report = build_report(ours, exports, results, drafts, origins, timings)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(summary_table(report))
    print(f"wrote {args.out} ({'passed' if report['passed'] else 'FAILED'})")
    return 0 if report["passed"] else 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line options (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Load specdec's exports in vLLM (CPU) and speculators; compare acceptance and outputs with specdec's runtime.")
    parser.add_argument("--medusa", type=Path, help="a Medusa draft folder (<output_dir>/draft); default: train recipe=medusa1 into WORK/medusa")
    parser.add_argument("--eagle3", type=Path, help="an EAGLE-3 draft folder; default: train recipe=eagle3 (100 steps) into WORK/eagle3")
    parser.add_argument("--work", type=Path, default=DEFAULT_WORK, help=f"drafts, exports and job files (default {DEFAULT_WORK}); drafts already there are reused")
    parser.add_argument("--engines-venv", type=Path, default=DEFAULT_ENGINES_VENV, help="the engines venv, created by scripts/engines_venv.sh when missing")
    parser.add_argument("--questions", type=int, default=8, help="MT-Bench questions: the first of each category, at most this many")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--eagle-tokens", type=int, default=3, help="tokens the EAGLE-3 drafter proposes per step (vLLM num_speculative_tokens, our chain depth)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "engines.json")
    parser.add_argument("--engine-job", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def ensure_engines_venv(venv: Path) -> Path:
    """The engines venv's python, after scripts/engines_venv.sh made sure it is installed and imports."""
    done = subprocess.run(["bash", str(ROOT / "scripts" / "engines_venv.sh"), str(venv)], capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"check_engines: error: scripts/engines_venv.sh {venv} failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]}; run it by hand to see why")
    return Path(done.stdout.strip().splitlines()[-1])


def cli(name: str) -> str:
    """A specdec console script of this venv."""
    return str(Path(sys.executable).parent / name)


def train_draft(kind: str, work: Path) -> tuple[Path, str]:
    """(draft folder, `trained` or `reused`): trained with TRAIN[kind] into WORK/<kind>, unless an
    earlier run left a draft there."""
    draft = work / kind / "draft"
    if (draft / "config.json").is_file():
        print(f"reusing the {kind} draft in {draft}")
        return draft, "reused"
    log = work / f"train_{kind}.log"
    work.mkdir(parents=True, exist_ok=True)
    print(f"training the {kind} draft ({' '.join(TRAIN[kind])}); log: {log}")
    with log.open("w") as out:
        done = subprocess.run([cli("specdec-train"), *TRAIN[kind], f"output_dir={work / kind}", "trainer.enable_progress_bar=false"], stdout=out, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        sys.exit(f"check_engines: error: training the {kind} draft failed (exit {done.returncode}); see {log}")
    return draft, "trained"


def export(draft: Path, fmt: str, out: Path) -> dict:
    """`specdec-export draft=... format=fmt out=...`: {dir, ok, error}."""
    done = subprocess.run([cli("specdec-export"), f"draft={draft}", f"format={fmt}", f"out={out}"], capture_output=True, text=True)
    error = None if done.returncode == 0 else (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
    return {"dir": str(out), "ok": done.returncode == 0, "error": error}


def measure_specdec(drafts: dict, num_questions: int, max_new_tokens: int, eagle_tokens: int) -> dict:
    """Prompts, plain greedy tokens and, per draft, the runtime's greedy chain decoding (the chain
    vLLM drafts: every Medusa head, `eagle_tokens` EAGLE steps)."""
    import torch

    from specdec.eval.benchmark import load_questions, prompt_ids
    from specdec.models.base import load_draft
    from specdec.models.target import EMBEDDED_HUB_ID, EMBEDDED_NAME, embedded_target_dir, load_target
    from specdec.runtime.generator import SpeculativeGenerator, choose_layout, plain_generate

    # Step 1: the target, its folder (the engines' verifier) and the prompts as token ids.
    target = load_target(EMBEDDED_NAME)
    questions = load_questions("mt-bench", max_questions=num_questions, per_category=1)
    prompts = [prompt_ids(target.tokenizer, q) for q in questions]
    ours = {"target_dir": str(embedded_target_dir()), "hub_id": EMBEDDED_HUB_ID, "max_new_tokens": max_new_tokens, "questions": questions, "prompts": [p[0].tolist() for p in prompts], "drafts": {}}
    with torch.inference_mode():
        # Step 2: plain greedy.
        ours["plain_tokens"] = [plain_generate(target.model, p, max_new_tokens, tokenizer=target.tokenizer).tokens for p in prompts]
        # Step 3: each draft, as a chain of the depth vLLM drafts.
        for kind, folder in drafts.items():
            draft = load_draft(folder)
            depth = draft.config.num_heads if kind == "medusa" else eagle_tokens
            generator = SpeculativeGenerator.from_draft(target.model, draft, choose_layout(draft, "chain", depth), tokenizer=target.tokenizer)
            results = [generator.generate(p, max_new_tokens) for p in prompts]
            ours["drafts"][kind] = runtime_summary(results, ours["plain_tokens"], depth)
    return ours


def runtime_summary(results: list, plain_tokens: list[list[int]], depth: int) -> dict:
    """Acceptance over all prompts, in vLLM's definition (1 + accepted / drafts) and as tau (tokens per target forward)."""
    accepted = [a for r in results for a in r.accepted_lengths]
    steps = max(len(accepted), 1)
    return {
        "num_speculative_tokens": depth,
        "mean_acceptance_length": 1 + sum(accepted) / steps,
        "acceptance_by_position": [sum(a >= d for a in accepted) / steps for d in range(1, depth + 1)],
        "tau": sum(len(r.tokens) for r in results) / sum(r.target_forwards for r in results),
        "lossless": all(r.tokens == plain for r, plain in zip(results, plain_tokens)),
    }


def engine_jobs(ours: dict, exports: dict, work: Path) -> dict[str, dict]:
    """Job name -> job: vLLM plain, vLLM per exported row, speculators on the speculators export."""
    common = {"target_dir": ours["target_dir"], "prompts": ours["prompts"], "max_new_tokens": ours["max_new_tokens"], "hub_cache": str(seed_hub_cache(work / "hub", ours["hub_id"], Path(ours["target_dir"])))}
    jobs = {"vllm-plain": {**common, "kind": "vllm"}}
    for kind, fmt, method in ROWS:
        if exports[kind, fmt]["ok"]:
            spec = {"method": method, "model": exports[kind, fmt]["dir"], "num_speculative_tokens": ours["drafts"][kind]["num_speculative_tokens"]}
            jobs[f"vllm-{kind}-{fmt}"] = {**common, "kind": "vllm", "speculative_config": spec}
    if exports["eagle3", "speculators"]["ok"]:
        jobs["speculators-eagle3-speculators"] = {**common, "kind": "speculators", "export_dir": exports["eagle3", "speculators"]["dir"]}
    return jobs


def seed_hub_cache(cache: Path, repo_id: str, folder: Path) -> Path:
    """An offline Hugging Face Hub cache in which `repo_id` (main) is `folder`'s files (symlinks), so a
    config naming the target by its Hub id (speculators' verifier) resolves without the network."""
    snapshot = cache / f"models--{repo_id.replace('/', '--')}" / "snapshots" / HUB_COMMIT
    snapshot.mkdir(parents=True, exist_ok=True)
    (snapshot.parents[1] / "refs").mkdir(exist_ok=True)
    (snapshot.parents[1] / "refs" / "main").write_text(HUB_COMMIT)
    for file in folder.iterdir():
        link = snapshot / file.name
        if not link.exists():
            link.symlink_to(file.resolve())
    return cache


def run_job(engines_python: Path, job: dict, folder: Path) -> dict:
    """Run one engine job in its own process (this script under the engines venv); its result, or the failure."""
    folder.mkdir(parents=True, exist_ok=True)
    job = {**job, "result": str(folder / "result.json")}
    (folder / "job.json").write_text(json.dumps(job))
    (folder / "result.json").unlink(missing_ok=True)
    print(f"engine job {folder.name} (log: {folder / 'log.txt'})")
    with (folder / "log.txt").open("w") as log:
        try:
            done = subprocess.run([str(engines_python), __file__, "--engine-job", str(folder / "job.json")], stdout=log, stderr=subprocess.STDOUT, timeout=JOB_TIMEOUT_S)
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = "timeout"
    if (folder / "result.json").is_file():
        return json.loads((folder / "result.json").read_text())
    return {"loads": False, "error": f"the engine process ended without a result (exit {code}); last lines of {folder / 'log.txt'}: {tail(folder / 'log.txt')}"}


def tail(path: Path, lines: int = 3) -> str:
    return " | ".join(line.strip() for line in path.read_text(errors="replace").splitlines()[-lines:])


def build_report(ours: dict, exports: dict, results: dict, drafts: dict, origins: dict, timings: dict) -> dict:
    """bench/engines.json: setting, versions, prompts, one row per (format, engine), timings."""
    plain = results["vllm-plain"]
    rows = [vllm_row(kind, fmt, method, exports[kind, fmt], results.get(f"vllm-{kind}-{fmt}"), ours, plain) for kind, fmt, method in ROWS]
    rows.append(speculators_row(exports["eagle3", "speculators"], results.get("speculators-eagle3-speculators")))
    engine_plain_matches = [a == b for a, b in zip(plain.get("tokens") or [], ours["plain_tokens"])]
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "passed": all(row["passed"] for row in rows),
        "command": "bash scripts/engines_venv.sh && .venv/bin/python scripts/check_engines.py",
        "versions": {"engines_venv": plain.get("engine_versions"), "specdec": specdec_versions(), "python": platform.python_version()},
        "setting": {
            "target": "smollm2-135m (embedded SmolLM2-135M-Instruct)",
            "target_dir": ours["target_dir"],
            "target_hub_id": ours["hub_id"],
            "bench": "MT-Bench, first turn, the first question of each category, chat template",
            "max_new_tokens": ours["max_new_tokens"],
            "decoding": "greedy, batch of all prompts in vLLM, batch 1 in specdec; vLLM dtype float32, enforce_eager",
            "vllm": {"max_model_len": MAX_MODEL_LEN, **{k: os.environ.get(k, v) for k, v in ENGINE_ENV.items()}},
            "drafts": {kind: {"dir": str(drafts[kind]), "origin": origins[kind], "train_args": None if origins[kind] == "passed" else TRAIN[kind]} for kind in drafts},
            "acceptance": "mean acceptance length = 1 + accepted draft tokens / drafting steps (vLLM's definition; specdec's runtime counted the same way, "
            "its tau = new tokens / target forwards with the prefill is given too)",
        },
        "prompts": [{"question_id": q["question_id"], "category": q["category"], "turn": q["turns"][0]} for q in ours["questions"]],
        "engine_plain": {"loads": plain.get("loads"), "error": plain.get("error"), "outputs_equal_specdec_plain_greedy": fraction(engine_plain_matches)},
        "rows": rows,
        "timings_s": {**{k: round(v, 1) for k, v in timings.items()}, **{f"job_{name}": r.get("seconds") for name, r in results.items()}},
    }


def vllm_row(kind: str, fmt: str, method: str, exported: dict, result: dict | None, ours: dict, plain: dict) -> dict:
    """One vLLM row: did the export load, decode, match plain greedy, and at what acceptance."""
    mine = ours["drafts"][kind]
    result = result or {"loads": False, "error": f"specdec-export failed: {exported['error']}"}
    tokens = result.get("tokens")
    spec = result.get("spec_decode") or {}
    equal_engine = fraction([a == b for a, b in zip(tokens, plain["tokens"])]) if tokens and plain.get("tokens") else None
    equal_ours = fraction([a == b for a, b in zip(tokens, ours["plain_tokens"])]) if tokens else None
    row = {
        "format": fmt,
        "engine": "vllm",
        "draft_type": kind,
        "method": method,
        "export_dir": exported["dir"],
        "num_speculative_tokens": mine["num_speculative_tokens"],
        "loads": bool(result.get("loads")),
        "decodes": result.get("decodes", False),
        "error": result.get("error"),
        "acceptance_engine": spec.get("mean_acceptance_length"),
        "acceptance_specdec": mine["mean_acceptance_length"],
        "acceptance_by_position_engine": spec.get("acceptance_by_position"),
        "acceptance_by_position_specdec": mine["acceptance_by_position"],
        "tau_specdec": mine["tau"],
        "specdec_lossless": mine["lossless"],
        "outputs_equal_plain_greedy": equal_engine,
        "outputs_equal_specdec_plain_greedy": equal_ours,
        "spec_decode_counters": {k: v for k, v in spec.items() if k.startswith("num_")} or None,
    }
    row["passed"] = bool(row["loads"] and row["decodes"] and row["acceptance_engine"] and equal_engine == 1.0)
    return row


def speculators_row(exported: dict, result: dict | None) -> dict:
    """The speculators package's own loader on the speculators export."""
    result = result or {"loads": False, "error": f"specdec-export failed: {exported['error']}"}
    row = {"format": "speculators", "engine": "speculators (SpeculatorModel.from_pretrained)", "draft_type": "eagle3", "export_dir": exported["dir"], "loads": bool(result.get("loads")), "error": result.get("error")}
    row.update({k: result[k] for k in ("class", "tensors_in_file", "parameters") if k in result})
    row["passed"] = row["loads"]
    return row


def fraction(matches: list[bool]) -> float | None:
    """Share of prompts whose outputs matched (None when nothing was compared)."""
    return sum(matches) / len(matches) if matches else None


def specdec_versions() -> dict:
    """This checkout's commit (with a +dirty mark) and the project venv's torch and transformers."""
    from importlib.metadata import version

    commit = subprocess.run(["git", "-C", str(ROOT), "describe", "--always", "--dirty=+dirty"], capture_output=True, text=True).stdout.strip() or None
    return {"commit": commit, "torch": version("torch"), "transformers": version("transformers")}


def summary_table(report: dict) -> str:
    """The rows as a terminal table."""
    lines = [f"{'format':<12} {'engine':<48} {'loads':<6} {'accept engine':>13} {'accept specdec':>14} {'= plain':>8}"]
    for row in report["rows"]:
        engine_acc = f"{row['acceptance_engine']:.2f}" if row.get("acceptance_engine") else "-"
        ours = f"{row['acceptance_specdec']:.2f}" if row.get("acceptance_specdec") else "-"
        equal = "-" if row.get("outputs_equal_plain_greedy") is None else f"{row['outputs_equal_plain_greedy']:.2f}"
        lines.append(f"{row['format']:<12} {row['engine']:<48} {str(row['loads']):<6} {engine_acc:>13} {ours:>14} {equal:>8}")
        if row.get("error"):
            lines.append(f"    error: {row['error'][:400]}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
