#!/usr/bin/env bash
# The prepared GPU check (issue 11): eager fp32 / fp16 / bf16, compiled, tensorrt where installed, for the tiny and
# the EVA02-B/16 + Swin-T (random weights) configs on a VGA frame, parity with eager fp32, a 150-class vocabulary
# switch; JSON + markdown table. Under 8 minutes on a CUDA machine, nothing downloaded.
#
#   bash tools/gpu_check.sh [OUT_DIR] [extra tools/gpu_check.py flags]
#
# Packages the GPU machine lacks (open_clip_torch, ftfy, wcwidth, ...) travel as wheels in .whl/ (see
# BENCHMARKS.md "GPU check"); they are installed into /tmp/site first.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_check_out}}
shift || true
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
exec timeout 470 "${PYTHON:-python3}" tools/gpu_check.py --out "$OUT_DIR" "$@"
