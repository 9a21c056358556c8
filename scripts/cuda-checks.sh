#!/usr/bin/env bash
# The checks that need a CUDA GPU, in one run (CI has none): the tests that skip without one,
# one training step under fp32 / channels-last / bf16, the data path against the compute
# ceiling, and the per-stage profile of a training run. Run from a clone with mmfuse's
# dependencies importable, e.g. after `make setup`:
#   bash scripts/cuda-checks.sh [OUT_DIR]
set -u
OUT="${1:-cuda-checks}"
PY="${PY:-python3}"
[ -x .venv/bin/python ] && PY=.venv/bin/python
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD/src:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; \
print(torch.__version__, torch.cuda.get_device_name(), 'bf16:', torch.cuda.is_bf16_supported())" \
  | tee "$OUT/device.txt" || exit 2
"$PY" -m pytest -q -p no:cacheprovider -k cuda tests/test_batched_frontend.py \
  tests/test_features_audio.py tests/test_features_image.py 2>&1 | tee "$OUT/pytest.txt"
"$PY" benchmarks/precision.py --device cuda 2>&1 | tee "$OUT/precision.txt"
"$PY" benchmarks/throughput.py --device cuda --settings before,after,after-cl,after-bf16 2>&1 \
  | tee "$OUT/throughput.txt"
# Where an epoch's time goes on the device: the per-stage profile of a `fast` run on avdigits
# (generated first; needs espeak-ng), epochs 2+ are the ones to read.
"$PY" - <<'PY' 2>&1 | tee "$OUT/avdigits.txt"
from mmfuse.data.avdigits import ensure_avdigits
print(ensure_avdigits(600, progress=False)["train"].parent)
PY
DATA="$(tail -1 "$OUT/avdigits.txt")"
"$PY" -m mmfuse train "$DATA/train.csv" --val "$DATA/val.csv" --preset fast --device cuda \
  --epochs 4 --profile --out "$(mktemp -d)/run-fast" 2>"$OUT/train-stderr.txt" \
  | grep -E "profile|^epoch" | tee "$OUT/profile.txt"
