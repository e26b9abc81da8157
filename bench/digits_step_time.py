"""Times one train step and one sampler network evaluation of digits configs.

  python -m bench.digits_step_time ngf=16,batch=64,size=8 ...

Each argument is a comma-separated list of overrides (ngf, batch, size, L,
sbatch = sampling batch, k = n_jitted_steps, scan = 1 to time the k steps
inside a `lax.scan`, which `step.multi_train_step` avoids on XLA:CPU because
convolution gradients inside a while loop are several times slower there);
the script prints compile time, seconds per train step and seconds per
Langevin step (one network evaluation of a sampling batch) for each.
"""

import functools
import sys
import time

from configs import digits
import jax
import jax.numpy as jnp
import numpy as np

from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.training import loop
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib


def scanned_train_step(state, images, keys, **kwargs):
  """The k steps in a `lax.scan` on every backend.

  A deliberately different form of the step (`scan=1`): it times the loop
  that `step.multi_train_step` avoids on XLA:CPU.
  """
  step = functools.partial(step_lib.train_step, **kwargs)
  return jax.lax.scan(lambda s, batch: step(s, *batch), state, (images, keys))


def parse(arg):
  out = {}
  for part in arg.split(','):
    k, v = part.split('=')
    out[k] = int(v)
  return out


def bench(o):
  config = digits.get_config()
  config.model.ngf = o.get('ngf', config.model.ngf)
  config.training.batch_size = o.get('batch', config.training.batch_size)
  config.data.image_size = o.get('size', config.data.image_size)
  config.model.num_classes = o.get('L', config.model.num_classes)
  config.sampling.batch_size = o.get('sbatch', config.sampling.batch_size)
  k = o.get('k', 1)
  config.training.n_jitted_steps = k
  model = models.create_model(config)
  # The loop's step, or (scan=1) the same k steps inside a lax.scan.
  p_train, tx = step_lib.make_train_step(config, model)
  if o.get('scan'):
    p_train = parallel.pmap_train_step(functools.partial(
        scanned_train_step, config=config,
        loss_fn=losses.get_loss_fn(config, model), tx=tx,
        axis_name=parallel.AXIS))
  state = train_state.create_train_state(config, model, tx, jax.random.key(0))
  n_params = models.count_params(state.params)
  s, b = config.data.image_size, config.training.batch_size
  images = np.random.rand(k, b, s, s, 1).astype(np.float32)
  keys = loop.train_keys(jax.random.key(1), 0, k, b)
  state = parallel.replicate(state)
  # Two warm-up calls: the first compiles; the second shows whether the
  # step's own output state needs another program (it should not).
  t0 = time.time()
  state, m = p_train(state, images, keys)
  jax.block_until_ready(m)
  compile_s = time.time() - t0
  t0 = time.time()
  state, m = p_train(state, images, keys)
  jax.block_until_ready(m)
  recompile_s = time.time() - t0
  n = max(3, 12 // k)
  t0 = time.time()
  for _ in range(n):
    state, m = p_train(state, images, keys)
  jax.block_until_ready(m)
  step_s = (time.time() - t0) / (n * k)
  # Sampler: one network evaluation of a sampling batch (forward only).
  b = config.sampling.batch_size
  score = jax.jit(lambda p, x, y: models.make_score_fn(model, p)(x, y))
  x = jnp.asarray(np.random.rand(b, s, s, 1).astype(np.float32))
  y = jnp.zeros((b,), jnp.int32)
  params = parallel.unreplicate(state).params
  score(params, x, y).block_until_ready()
  t0 = time.time()
  for _ in range(5):
    out = score(params, x, y)
  out.block_until_ready()
  eval_s = (time.time() - t0) / 5
  print(f'{o}: params={n_params} compile={compile_s:.1f}s '
        f'recompile={recompile_s:.1f}s '
        f'step={step_s * 1000:.0f}ms eval[{b}]={eval_s * 1000:.1f}ms',
        flush=True)


if __name__ == '__main__':
  for arg in sys.argv[1:]:
    bench(parse(arg))
