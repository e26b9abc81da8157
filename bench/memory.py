"""XLA's memory figures of the NCSNv2 CIFAR-10 train step, per setting.

  python -m bench.memory [--batch=128] [--settings=base,bfloat16,...] \
      [--undonated] [--json=PATH]

Compiles (does not run) the train step the loop runs (`make_train_step`:
pmapped over the local devices, the state donated; `jax_timers.
lower_train_step`) of the CIFAR-10 NCSNv2 config (ngf 128, 32x32x3, from
`plain_config`) for each setting:

* `base`: the config as it is (float32);
* `bfloat16`: `model.dtype='bfloat16'`;
* `accum2`: `training.grad_accum_steps=2`;
* `bfloat16_remat`: bfloat16 and `model.remat=True`;

and prints `compiled.memory_analysis()` (`jax_timers.memory`): argument,
output, alias (output bytes written into donated input buffers),
temporaries and XLA's peak estimate. `--undonated` also compiles the first
setting's step without donation, only to show what donation saves; nothing
runs that form. Compiling takes a minute or more per setting on a small
CPU; `--ngf` and `--image_size` make quick runs.
"""

import argparse
import json
import time

from bench import jax_timers
from bench import plain_config
import jax

from ncsn_jax import train_state

SETTINGS = {
    'base': {},
    'bfloat16': {('model', 'dtype'): 'bfloat16'},
    'accum2': {('training', 'grad_accum_steps'): 2},
    'bfloat16_remat': {('model', 'dtype'): 'bfloat16',
                       ('model', 'remat'): True},
}
FIELDS = ('argument_bytes', 'output_bytes', 'alias_bytes', 'temp_bytes',
          'peak_bytes')


def setting_config(name: str, batch: int, ngf: int = 0, image_size: int = 0):
  """The CIFAR-10 NCSNv2 config with one of `SETTINGS` applied."""
  config = jax_timers.train_config(plain_config.get_config(), batch)
  if ngf:
    config.model.ngf = ngf
  if image_size:
    config.data.image_size = image_size
  for (section, field), value in SETTINGS[name].items():
    config[section][field] = value
  return config


def figures(config, donate: bool = True) -> dict:
  """Memory figures (bytes) and compile seconds of the config's step."""
  start = time.perf_counter()
  compiled = jax_timers.lower_train_step(config, donate)[0].compile()
  return dict(jax_timers.memory(compiled),
              compile_s=round(time.perf_counter() - start, 1))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--settings', default='base',
                      help=f'Comma list of {", ".join(SETTINGS)}.')
  parser.add_argument('--undonated', action='store_true')
  parser.add_argument('--ngf', type=int, default=0, help='0: 128.')
  parser.add_argument('--image_size', type=int, default=0, help='0: 32.')
  parser.add_argument('--json', default='')
  args = parser.parse_args()
  names = args.settings.split(',')
  for name in names:
    if name not in SETTINGS:
      parser.error(f'--settings: unknown {name!r}; use {", ".join(SETTINGS)}')
  first = setting_config(names[0], args.batch, args.ngf, args.image_size)
  state = train_state.abstract_train_state(first)
  result = {'backend': jax.default_backend(),
            'device': jax.devices()[0].device_kind,
            'devices': jax.local_device_count(), 'batch': args.batch,
            'ngf': first.model.ngf, 'image_size': first.data.image_size,
            'jax': jax.__version__,
            'state_bytes': sum(x.size * x.dtype.itemsize
                               for x in jax.tree.leaves(state)),
            'settings': {}}
  for name in names:
    config = setting_config(name, args.batch, args.ngf, args.image_size)
    result['settings'][name] = figures(config)
    print(name, result['settings'][name], flush=True)
  if args.undonated:
    result['undonated'] = {names[0]: figures(first, donate=False)}
    print(f'{names[0]} (not donated)', result['undonated'][names[0]],
          flush=True)
  gib = lambda b: (f'{b / 2**30:.2f} GiB' if b >= 2**30 else
                   f'{b / 2**20:.2f} MiB')
  print(f'{result["device"]} x {result["devices"]}, batch {args.batch}, '
        f'train state (params, Adam, EMA): {gib(result["state_bytes"])}')
  print(f'{"setting":26s} ' + ' '.join(f'{f[:-6]:>10s}' for f in FIELDS))
  rows = list(result['settings'].items()) + [
      (f'{n} (not donated)', r) for n, r in result.get('undonated',
                                                       {}).items()]
  for name, r in rows:
    print(f'{name:26s} ' + ' '.join(
        f'{gib(r[f]) if f in r else "-":>10s}' for f in FIELDS))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
