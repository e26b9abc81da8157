#!/usr/bin/env bash
# The GPU benchmarks of the NCSNv2 CIFAR-10 network: one GPU, about 10
# minutes on an H200.
#
#   bash bench/gpu.sh [extra bench.py flags]
#
# Needs jax with CUDA, flax, optax, orbax and numpy only (no tensorflow,
# tfds, clu or ml_collections). Runs, in turn:
#
# 1. bench.py, writing $JSON (default bench_gpu.json): train images/s at
#    batch 128 in float32 and with model.dtype='bfloat16', score
#    evaluations/s of the Langevin chain in float32 and bfloat16 at
#    sampling batches 1000-4000 (up to the largest that fits), compile
#    times, memory_stats() peak, model FLOPs counted from the traced
#    program and the achieved FLOP/s against the chip's peak, and the
#    FID-50k sampling time beside its lower bound at the peak. With
#    NCSNV2_REPO=PATH/TO/ncsnv2 (the official code) and a $TORCH_PYTHON
#    (default: $PYTHON) whose torch sees CUDA, the official PyTorch NCSNv2
#    is timed at the same batch, interleaved round by round.
# 2. compile_cache.py --program=step ($CACHE_FLAGS; JSON: *_cache.json):
#    the train step compiled in a fresh process with an empty persistent
#    compilation cache, then loaded from it in a second one.
# 3. loop_overhead.py ($LOOP_FLAGS; JSON: *_loop.json): the training loop
#    against its bare step. It loads the train step from step 2's cache
#    (the same program), so it does not compile it a third time.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
TORCH_PYTHON=${TORCH_PYTHON:-$PYTHON}
JSON=${JSON:-bench_gpu.json}
read -r -a cache_flags <<< "${CACHE_FLAGS:---batch=128}"
read -r -a loop_flags <<< "${LOOP_FLAGS:---batch=128 --steps=50 --rounds=3}"
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
"$PYTHON" -m bench.bench --batch=128 --dtypes=float32,bfloat16 \
  --sample_dtypes=float32,bfloat16 --sample_batches=1000,2000,4000 \
  --sample_levels=2 --rounds=3 --steps=5 --pause=0.5 --threads="$(nproc)" \
  --json="$JSON" ${torch_flags[@]+"${torch_flags[@]}"} "$@"

cache_root=$(mktemp -d)
trap 'rm -rf "$cache_root"' EXIT
"$PYTHON" -m bench.compile_cache --program=step --cache_dir="$cache_root" \
  --json="${JSON%.json}_cache.json" "${cache_flags[@]}"
JAX_COMPILATION_CACHE_DIR="$cache_root/cache" "$PYTHON" -m bench.loop_overhead \
  --json="${JSON%.json}_loop.json" "${loop_flags[@]}"
