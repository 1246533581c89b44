#!/usr/bin/env bash
# Every GPU check in one go, on a lent GPU machine (see benchmarks/README.md, "On a lent GPU machine").
# Installs the carried wheels (benchmarks/gpu_kit.sh) beside the image's packages, prints what the machine has,
# runs `python -m benchmarks.gpu_check` and the `gpu`-marked tests, and leaves logs and JSON in $OUT (or ./out).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/out}
mkdir -p "$OUT"
PY=${PY:-python3}
if compgen -G ".whl/*.whl" > /dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} \
    || echo "gpu_device_run: the carried wheels did not install (wrong Python?); the study check may fail"
fi
# The copy of the project there is not installed: its folder goes first on the path, for this script's Python and
# for every process the engine starts (cells run in scratch folders, where `-m` would not find the project).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1 PARETOSCOPE_DATA_DIR=/tmp/paretoscope-data
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  "$PY" - <<'PYEOF'
import importlib.metadata as md
for name in ("torch", "onnxruntime", "onnxruntime-gpu", "tensorrt", "transformers", "onnx", "nvidia-ml-py", "sqlalchemy"):
    try:
        print(f"{name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"{name} absent")
import torch
print("torch.cuda", torch.cuda.is_available(), torch.version.cuda)
PYEOF
  "$PY" -m engine runtimes
} 2>&1 | tee "$OUT/machine.txt"
status=0
# the table goes to stdout, row by row; exporters' chatter goes to stderr (gpu_check.err) or is filtered below
timeout "${CHECK_TIMEOUT:-420}" "$PY" -m benchmarks.gpu_check --out "$OUT/gpu_check.json" > "$OUT/gpu_check.log" \
  2> "$OUT/gpu_check.err" || status=$?
[ "$status" = 124 ] && echo "gpu_check: stopped at ${CHECK_TIMEOUT:-420} s; the rows above and the JSON are what it measured"
grep -v '^\[torch.onnx\]' "$OUT/gpu_check.log" | tail -n 80
tail -n 5 "$OUT/gpu_check.err"
timeout "${TEST_TIMEOUT:-60}" "$PY" -m pytest -q -m gpu -p no:cacheprovider tests/engine/test_gpu.py \
  > "$OUT/pytest_gpu.log" 2>&1 || status=$((status == 0 ? $? : status))
tail -n 15 "$OUT/pytest_gpu.log"
echo "gpu_device_run: exit $status"
exit $status
