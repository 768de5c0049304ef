"""scripts/gpu_check.py runs the same code path on a CPU (the check itself needs a GPU machine)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_end_to_end_on_a_cpu_with_a_tiny_target(tmp_path, tiny_target_dir):
    out = tmp_path / "check.json"
    cmd = [sys.executable, "scripts/gpu_check.py", "--device", "cpu", "--quick", "--target", str(tiny_target_dir), "--out", str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert report["ok"] and report["environment"]["device"] == "cpu"
    assert set(report["train"]) == set(report["decode"]) == {"eagle3", "medusa1"}
    assert all(t["loss_finite"] and t["steps"] == 3 for t in report["train"].values())
    assert all(d["lossless_match"] == 1.0 and d["mean_accepted_tokens"] >= 1.0 for d in report["decode"].values())
    cost = report["verify_cost"]
    assert list(cost["ratio_to_k1"]) == ["1", "2", "4"] and cost["ratio_to_k1"]["1"] == 1.0 and all(s > 0 for s in cost["seconds"].values())


def test_the_gpu_check_refuses_to_run_without_a_gpu_and_says_so():
    proc = subprocess.run([sys.executable, "scripts/gpu_check.py", "--out", "/dev/null"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "no CUDA device is visible" in proc.stderr
