#!/usr/bin/env bash
# Wheels that the lent GPU machines' image lacks, for benchmarks/gpu_device_run.sh: run here (where pip reaches
# the package index), then name .whl in the device call's carry. The image (KINDS.md of the device tool) is
# Python 3.12 with torch+CUDA, transformers, onnx, onnxruntime (CPU), safetensors, psutil, nvidia-ml-py and
# pytest; the engine's study path also needs SQLAlchemy and Alembic. onnxruntime-gpu (~300 MB) and TensorRT
# are too big to carry (64 MiB a call), so those runtimes report `unavailable` there, with the reason.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
PYVER=${PYVER:-3.12}
rm -rf .whl && mkdir -p .whl
fetch() {
  "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$@"
}
# pure-Python ones and the two with C extensions (greenlet is SQLAlchemy's), one version each
fetch "sqlalchemy>=2.0" greenlet alembic mako
du -sh .whl
ls .whl
