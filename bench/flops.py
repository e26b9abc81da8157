"""Model FLOPs counted from the traced program, whatever the backend.

XLA's cost analysis of a compiled program counts what the backend compiled:
on a GPU the convolutions become cuDNN custom calls that it does not count
at all (it reported 0.05 GFLOP for an 18 GFLOP forward pass). So the benchmarks
count FLOPs here instead, before any compiler sees the program: the jaxpr
of a function (`jax.make_jaxpr`, cheap: nothing is compiled) is walked and
every `conv_general_dilated` and `dot_general` contributes 2 x its
multiply-adds. Elementwise work (norms, activations, the optimiser update)
is left out: it is a fraction of a percent of the convolutions' FLOPs
here and runs at memory speed, not at the chip's FLOP peak.

Sub-programs are followed: `jit`, `remat` and custom derivatives, `pmap`
and `shard_map` bodies (x the devices they run on, so a pmapped step
counts the whole batch), `scan` bodies (x the length), `cond` (the
costliest branch). A `while` loop has no static trip count and is
refused rather than guessed.
"""

import math
from typing import Any, Callable

import jax
from jax.extend import core
import numpy as np

def _shape(var) -> tuple:
  return tuple(var.aval.shape)


def _taps(size_in: int, size_out: int, kernel: int, stride: int,
          pad_lo: int, lhs_dilation: int, rhs_dilation: int) -> int:
  """(output index, kernel index) pairs of one spatial dimension that read
  a real input element (not padding, not a hole of the input dilation)."""
  o = np.arange(size_out)[:, None]
  k = np.arange(kernel)[None, :]
  pos = o * stride - pad_lo + k * rhs_dilation
  real = (pos >= 0) & (pos <= (size_in - 1) * lhs_dilation)
  return int(np.sum(real & (pos % lhs_dilation == 0)))


def conv_flops(eqn) -> float:
  """2 x multiply-adds of one `conv_general_dilated` equation.

  Every output element sums, over the rhs's input features (already divided
  by the feature groups), the kernel taps that fall on real input: taps on
  the zero padding or on the holes of an input dilation (how JAX writes the
  input gradient of a strided convolution) are not counted, as XLA's own
  cost analysis does not count them. The same holds for batch-grouped
  convolutions, which is how JAX writes a kernel gradient.
  """
  p = eqn.params
  lhs, rhs, out = (_shape(v) for v in (eqn.invars[0], eqn.invars[1],
                                       eqn.outvars[0]))
  lhs_spec, rhs_spec, out_spec = p['dimension_numbers']
  taps = 1
  for i, (l, r, o) in enumerate(zip(lhs_spec[2:], rhs_spec[2:],
                                    out_spec[2:])):
    taps *= _taps(lhs[l], out[o], rhs[r], p['window_strides'][i],
                  p['padding'][i][0], p['lhs_dilation'][i],
                  p['rhs_dilation'][i])
  # Per output (batch, feature) pair: taps x input features.
  pairs = out[out_spec[0]] * out[out_spec[1]]
  return 2.0 * pairs * taps * rhs[rhs_spec[1]]


def dot_flops(eqn) -> float:
  """2 x multiply-adds of one `dot_general` equation."""
  (contract, _), _ = eqn.params['dimension_numbers']
  lhs = _shape(eqn.invars[0])
  return (2.0 * math.prod(_shape(eqn.outvars[0])) *
          math.prod(lhs[d] for d in contract))


def _sub_jaxprs(value):
  """The jaxprs inside one equation parameter (a jaxpr, or a tuple)."""
  if isinstance(value, core.ClosedJaxpr):
    return [value.jaxpr]
  if isinstance(value, core.Jaxpr):
    return [value]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _sub_jaxprs(v)]
  return []


def _manual_devices(params) -> int:
  """Devices a `shard_map` body runs on (its manual mesh axes)."""
  mesh = params['mesh']
  axes = next((params[k] for k in ('newly_manual_axes', 'manual_axes',
                                   'axis_names') if params.get(k)),
              mesh.axis_names)
  return math.prod(dict(mesh.shape)[a] for a in axes)


def jaxpr_flops(jaxpr) -> float:
  """Convolution and matmul FLOPs of a (closed) jaxpr, sub-programs in."""
  if isinstance(jaxpr, core.ClosedJaxpr):
    jaxpr = jaxpr.jaxpr
  total = 0.0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name == 'conv_general_dilated':
      total += conv_flops(eqn)
    elif name == 'dot_general':
      total += dot_flops(eqn)
    elif name == 'while':
      raise ValueError('cannot count FLOPs through a while loop (no static '
                       'trip count); use lax.scan.')
    elif name == 'cond':
      total += max(jaxpr_flops(b) for b in eqn.params['branches'])
    else:
      inner = sum(jaxpr_flops(j) for v in eqn.params.values()
                  for j in _sub_jaxprs(v))
      if name == 'scan':
        inner *= eqn.params['length']
      elif name in ('xla_pmap', 'pmap'):
        inner *= eqn.params['axis_size']
      elif name == 'shard_map':  # The body runs once per device.
        inner *= _manual_devices(eqn.params)
      total += inner
  return total


def count(fn: Callable[..., Any], *args, **kwargs) -> float:
  """FLOPs of one call `fn(*args, **kwargs)`, counted from its jaxpr.

  Args:
    fn: a JAX-traceable function (jitted, pmapped or plain).
    *args: its arguments; arrays or `jax.ShapeDtypeStruct`s (nothing runs).
    **kwargs: its keyword arguments, likewise.

  Returns:
    2 x the multiply-adds of every convolution and matrix product.
  """
  return jaxpr_flops(jax.make_jaxpr(fn)(*args, **kwargs))

