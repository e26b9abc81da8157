"""3x3 stride-1 convolution by Winograd's minimal filtering, F(2x2, 3x3).

Each 2x2 output tile is computed from its 4x4 input tile with 16
multiplications per channel pair instead of 36 (Lavin & Gray, 2016):

  Y = A^T [ (G g G^T) * (B^T d B) ] A

with the transforms (B^T, G, A^T) below. The products of all tiles become
16 matrix multiplications [tiles, Cin] x [Cin, Cout], which XLA runs at its
matmul speed; the transforms are additions and halvings only, so the result
equals a direct convolution to float32 rounding (relative error ~1e-6).

On XLA:CPU this is 1.4-2.9x faster than `lax.conv_general_dilated` for
the large, narrow maps of the Inception stem (bench/README.md); at small
maps the transforms cost more than they save.
"""

from jax import lax
import jax.numpy as jnp
import numpy as np

# Kernel transform G [4,3]; the input (B^T) and output (A^T) transforms are
# written out as sums in `_input_1d` and `_output_1d`.
_G = np.array([[1.0, 0.0, 0.0],
               [0.5, 0.5, 0.5],
               [0.5, -0.5, 0.5],
               [0.0, 0.0, 1.0]], np.float32)


def _input_1d(d):
  """B^T along one axis: 4 inputs [d0..d3] -> 4 transformed values."""
  return [d[0] - d[2], d[1] + d[2], d[2] - d[1], d[1] - d[3]]


def _output_1d(m):
  """A^T along one axis: 4 products [m0..m3] -> 2 outputs."""
  return [m[0] + m[1] + m[2], m[1] - m[2] - m[3]]


def conv3x3(x, kernel, padding: tuple[int, int] = (0, 0),
            precision=lax.Precision.HIGHEST):
  """Stride-1 3x3 convolution, NHWC x HWIO -> NHWC, via F(2x2, 3x3).

  Args:
    x: [B,H,W,Cin].
    kernel: [3,3,Cin,Cout].
    padding: (ph, pw) zeros on both sides of each spatial axis, as
      PyTorch's integer padding.
    precision: of the 16 tile matmuls.

  Returns:
    [B, H + 2ph - 2, W + 2pw - 2, Cout], equal to
    `lax.conv_general_dilated(x, kernel, (1, 1), padding)` up to rounding.
  """
  if kernel.shape[:2] != (3, 3):
    raise ValueError(f'conv3x3 takes a [3,3,Cin,Cout] kernel, got '
                     f'{kernel.shape}.')
  b, h, w, cin = x.shape
  ph, pw = padding
  ho, wo = h + 2 * ph - 2, w + 2 * pw - 2
  th, tw = (ho + 1) // 2, (wo + 1) // 2  # Tiles; odd outputs are padded.
  x = jnp.pad(x, ((0, 0), (ph, 2 * th + 2 - h - ph),
                  (pw, 2 * tw + 2 - w - pw), (0, 0)))
  # Tile (i, j) reads rows 2i..2i+3 and columns 2j..2j+3: strided views.
  rows = _input_1d([x[:, k:k + 2 * th:2] for k in range(4)])
  v = jnp.stack([c for r in rows
                 for c in _input_1d([r[:, :, k:k + 2 * tw:2]
                                     for k in range(4)])])
  u = jnp.einsum('ik,klcf,jl->ijcf', _G, kernel, _G, precision=precision)
  m = jnp.einsum('nbhwc,ncf->nbhwf', v, u.reshape(16, cin, -1),
                 precision=precision)
  m = m.reshape((4, 4) + m.shape[1:])  # [4 (row), 4 (col), B,th,tw,Cout]
  y = [_output_1d([r[k] for k in range(4)]) for r in _output_1d(m)]
  # y[a][c]: output pixel (2i + a, 2j + c) of every tile -> interleave.
  y = jnp.stack([jnp.stack(row, axis=3) for row in y], axis=2)
  y = y.reshape(b, 2 * th, 2 * tw, -1)
  return y[:, :ho, :wo]
