#!/usr/bin/env bash
# The GPU check for contributors with a GPU: builds the extension, runs the tests, runs the
# GPU benchmark matrix, and leaves log.txt, cuda.json and cuda.png in OUTDIR.
#
#   bash benchmarks/gpu_check.sh OUTDIR
#
# Uses the torch, triton and nvcc already installed (no network needed). The whole GPU
# matrix runs without the torch.compile baseline (a compile per row would not fit the
# 9 minutes); the two headline shapes (fastrnns, FlashRNN's) run again with it, into
# cuda-compiled.json. Commit OUTDIR's JSON under benchmarks/results/ named after the
# device and the date, then run `python -m benchmarks.readme_table`.
set -euo pipefail
out=${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}
mkdir -p "$out"
cd "$(dirname "$0")/.."
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || true
  python -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)"
  python -c "import triton; print('triton', triton.__version__)" || true
  pip install --no-deps --no-build-isolation -e . 
  # The cuda backend's kernels have never run: first alone, synchronously (a fault names
  # its launch), and under compute-sanitizer's memcheck and racecheck where it exists.
  cuda_k="cuda and fp32 and (LSTM or GRU or additive or dot)"
  CUDA_LAUNCH_BLOCKING=1 python -m pytest -q -p no:cacheprovider -rfE -k "$cuda_k" \
    tests/test_stepwise_recurrence.py tests/test_sequence_recurrence.py tests/test_stepwise_variants.py \
    tests/test_attention.py || true
  if command -v compute-sanitizer >/dev/null; then
    for tool in memcheck racecheck; do
      timeout 300 compute-sanitizer --tool "$tool" --error-exitcode 3 python -m pytest -q \
        -p no:cacheprovider -x -k "$cuda_k and (tq4 or rev-len or ragged_rev)" \
        tests/test_stepwise_recurrence.py tests/test_sequence_recurrence.py \
        tests/test_stepwise_variants.py tests/test_attention.py || echo "compute-sanitizer $tool: exit $?"
    done
  fi
  # Every failure, not the first: one GPU session should see them all.
  python -m pytest tests -q -p no:cacheprovider -rfE || true
  python -m benchmarks.run --device cuda --quick --no-compiled --out "$out/cuda.json" --plot "$out/cuda.png"
  python -m benchmarks.run --device cuda --quick --ops recurrence --shapes 100,64,512,512 \
    1024,16,768,768 --out "$out/cuda-compiled.json" --no-plot
} 2>&1 | tee "$out/log.txt"
