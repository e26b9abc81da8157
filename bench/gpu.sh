#!/usr/bin/env bash
# The GPU benchmark of the NCSNv2 CIFAR-10 network, one GPU, a few minutes.
#
#   bash bench/gpu.sh [extra bench.py flags]
#
# Needs jax with CUDA, flax, optax and numpy only (no tensorflow, tfds, clu
# or ml_collections). Writes $JSON (default bench_gpu.json): train images/s
# at batch 128 in float32 and with model.dtype='bfloat16', score
# evaluations/s of the Langevin chain at sampling batches 250-2000 (the
# largest that fits), compile times, memory_stats() peak, achieved FLOP/s
# against the chip's peak, and the FID-50k sampling time. With
# NCSNV2_REPO=PATH/TO/ncsnv2 (the official code) and a $TORCH_PYTHON
# (default: $PYTHON) whose torch sees CUDA, the official PyTorch NCSNv2 is
# timed at the same batch, interleaved round by round.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
JSON=${JSON:-bench_gpu.json}
# JAX would otherwise take 75% of the GPU's memory up front, leaving too
# little for the PyTorch side; its peak is still reported by memory_stats().
export XLA_PYTHON_CLIENT_PREALLOCATE=${XLA_PYTHON_CLIENT_PREALLOCATE:-false}

torch_flags=()
if [[ -n "${NCSNV2_REPO:-}" ]] && "$TORCH_PYTHON" -c \
    'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null
then
  torch_flags=(--ncsnv2_repo="$NCSNV2_REPO" --torch_python="$TORCH_PYTHON"
               --torch_device=cuda)
else
  echo "PyTorch side skipped (set NCSNV2_REPO and a TORCH_PYTHON with CUDA)" >&2
fi

"$PYTHON" -c 'import jax; print(jax.devices())'
exec "$PYTHON" -m bench.bench --batch=128 --dtypes=float32,bfloat16 \
  --sample_batches=250,500,1000,2000 --sample_levels=2 --rounds=3 --steps=5 \
  --pause=0.5 --threads="$(nproc)" --json="$JSON" \
  ${torch_flags[@]+"${torch_flags[@]}"} "$@"
