"""Host overhead of the training loop on the digits config, interleaved.

  python -m bench.digits_loop_overhead [steps] [repeats]

Runs the digits train step in one process with four host loops, taking
turns so that a loaded machine slows them alike:
  fixed:  one batch and one key array reused, no host work (the floor);
  eager:  a tf.data batch, the per-step keys made op by op and the metrics
          fetched after every step (the loop before these changes);
  jitted: the same with the keys made by one jitted program;
  loop:   jitted keys and no fetch until the end (`loop.train_and_evaluate`
          fetches the non-finite flags only at log and snapshot steps).
Prints wall and process CPU milliseconds per step of each.
"""

import sys
import tempfile
import time

from configs import digits
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.training import loop


def eager_keys(train_key, first_step: int, k: int, n: int):
  """`loop.train_keys` without jit: a dozen small dispatches per step."""
  return jnp.stack([
      parallel.process_keys(jax.random.fold_in(train_key, first_step + j), n)
      for j in range(k)
  ])


def main(steps: int, repeats: int):
  config = digits.get_config()
  ctx = loop._build(config, tempfile.mkdtemp())  # pylint: disable=protected-access
  state = parallel.replicate(
      train_state.create_train_state(config, ctx.model, ctx.tx,
                                     ctx.keys['init']))
  b = config.training.batch_size
  fixed = loop._next_batches(ctx.train_iter, 1)  # pylint: disable=protected-access
  fixed_keys = loop.train_keys(ctx.keys['train'], 0, 1, b)
  state, m = ctx.p_train(state, fixed, fixed_keys)  # Compiles.
  jax.block_until_ready(m)

  def run(mode):
    nonlocal state
    wall, cpu = time.perf_counter(), time.process_time()
    for s in range(steps):
      if mode == 'fixed':
        images, keys = fixed, fixed_keys
      else:
        images = loop._next_batches(ctx.train_iter, 1)  # pylint: disable=protected-access
        make = eager_keys if mode == 'eager' else loop.train_keys
        keys = make(ctx.keys['train'], s, 1, b)
      state, m = ctx.p_train(state, images, keys)
      if mode in ('eager', 'jitted'):
        np.asarray(m['nonfinite'])
    jax.block_until_ready(m)
    return (1000 * (time.perf_counter() - wall) / steps,
            1000 * (time.process_time() - cpu) / steps)

  for r in range(repeats):
    for mode in ('fixed', 'eager', 'jitted', 'loop'):
      wall, cpu = run(mode)
      print(
          f'repeat {r} {mode:6s}: {wall:6.1f} ms/step wall, '
          f'{cpu:6.1f} ms/step CPU',
          flush=True)


if __name__ == '__main__':
  args = [int(a) for a in sys.argv[1:3]]
  main(*(args + [40, 2][len(args):]))
