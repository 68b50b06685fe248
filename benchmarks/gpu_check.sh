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
  # Every failure, not the first: one GPU session should see them all.
  python -m pytest tests -q -p no:cacheprovider -rfE || true
  python -m benchmarks.run --device cuda --quick --no-compiled --out "$out/cuda.json" --plot "$out/cuda.png"
  python -m benchmarks.run --device cuda --quick --ops recurrence --shapes 100,64,512,512 \
    1024,16,768,768 --out "$out/cuda-compiled.json" --no-plot
} 2>&1 | tee "$out/log.txt"
