"""XLA's memory figures of the NCSNv2 CIFAR-10 train step, donated or not.

  python -m bench.memory [--batch=128] [--json=PATH]

Compiles (does not run) the pmapped train step of the NCSNv2 CIFAR-10 model
(ngf 128, 32x32x3) on one device of the local backend, in three forms:

* `replicated_in_axes_none`: the state broadcast to the devices
  (`in_axes=None`, `out_axes=None`), as the step was pmapped before; there
  is no per-device input buffer to donate;
* `device_state`: the state device-replicated (`in_axes=0`), not donated;
* `device_state_donated`: the same with `donate_argnums=(0,)`, which is
  what `parallel.pmap_train_step` builds;

and prints `compiled.memory_analysis()` for each: argument, output, alias
(output bytes written into donated input buffers), temporaries, and XLA's
peak estimate. Compiling takes minutes on a small CPU.
"""

import argparse
import functools
import json
import time

from configs import cifar10_ncsnv2
import jax

from ncsn_jax import models
from ncsn_jax import parallel
from ncsn_jax import train_state
from ncsn_jax.training import losses
from ncsn_jax.training import step as step_lib

FORMS = {
    'replicated_in_axes_none': dict(in_axes=(None, 0, 0),
                                    out_axes=(None, None)),
    'device_state': dict(in_axes=(0, 0, 0), out_axes=(0, None)),
    'device_state_donated': dict(in_axes=(0, 0, 0), out_axes=(0, None),
                                 donate_argnums=(0,)),
}


def _abstract(tree, lead=()):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(lead + tuple(x.shape), x.dtype), tree)


def memory_figures(batch: int) -> dict:
  """{form: memory figures in bytes, and compile seconds}."""
  config = cifar10_ncsnv2.get_config()
  config.training.batch_size = batch
  model = models.create_model(config)
  tx = train_state.create_optimizer(config)
  step_fn = functools.partial(
      step_lib.multi_train_step, config=config,
      loss_fn=losses.get_loss_fn(config, model), tx=tx,
      axis_name=parallel.AXIS)
  state = jax.eval_shape(lambda: train_state.create_train_state(
      config, model, tx, jax.random.key(0)))
  images = jax.ShapeDtypeStruct((1, 1, batch, 32, 32, 3), 'float32')
  keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0),
                                                 batch)[None, None])
  out = {'state_bytes': sum(x.size * x.dtype.itemsize
                            for x in jax.tree.leaves(state))}
  for name, kwargs in FORMS.items():
    mapped = jax.pmap(step_fn, axis_name=parallel.AXIS,
                      devices=jax.devices()[:1], **kwargs)
    lead = () if kwargs['in_axes'][0] is None else (1,)
    start = time.perf_counter()
    compiled = mapped.lower(_abstract(state, lead), images, keys).compile()
    m = compiled.memory_analysis()
    out[name] = {
        'compile_s': round(time.perf_counter() - start, 1),
        'argument_bytes': int(m.argument_size_in_bytes),
        'output_bytes': int(m.output_size_in_bytes),
        'alias_bytes': int(m.alias_size_in_bytes),
        'temp_bytes': int(m.temp_size_in_bytes),
        'peak_bytes': int(m.peak_memory_in_bytes),
    }
    print(name, out[name], flush=True)
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  result = {'backend': jax.default_backend(),
            'device': jax.devices()[0].device_kind, 'batch': args.batch,
            'jax': jax.__version__}
  result.update(memory_figures(args.batch))
  gib = lambda b: f'{b / 2**30:.2f} GiB'
  print(f'train state (params, Adam, EMA): {gib(result["state_bytes"])}')
  print(f'{"form":26s} {"argument":>10s} {"output":>10s} {"alias":>10s} '
        f'{"temp":>10s} {"peak":>10s}')
  for name in FORMS:
    r = result[name]
    print(f'{name:26s} ' + ' '.join(
        f'{gib(r[k]):>10s}' for k in ('argument_bytes', 'output_bytes',
                                      'alias_bytes', 'temp_bytes',
                                      'peak_bytes')))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
