"""Peak FLOP/s of known accelerators, and the FID-50k sampling time.

Peaks are the vendors' dense (no sparsity) figures in TFLOP/s: 'bfloat16'
for the tensor cores / MXU, 'float32' for plain FP32 and, on NVIDIA parts
with TensorFloat-32, 'tf32' (XLA may run float32 convolutions as TF32 on
those, so float32 runs are compared with both).
"""

from typing import Optional

# (substring of jax's device_kind, peaks); the first match wins, so the
# more specific names come first.
PEAK_TFLOPS = (
    ('H100 PCIe', {
        'bfloat16': 756.0,
        'tf32': 378.0,
        'float32': 51.0
    }),
    ('H100', {
        'bfloat16': 989.0,
        'tf32': 494.0,
        'float32': 67.0
    }),
    ('H200', {
        'bfloat16': 989.0,
        'tf32': 494.0,
        'float32': 67.0
    }),
    ('H800', {
        'bfloat16': 989.0,
        'tf32': 494.0,
        'float32': 67.0
    }),
    ('GH200', {
        'bfloat16': 989.0,
        'tf32': 494.0,
        'float32': 67.0
    }),
    ('A100', {
        'bfloat16': 312.0,
        'tf32': 156.0,
        'float32': 19.5
    }),
    ('L40S', {
        'bfloat16': 362.0,
        'tf32': 183.0,
        'float32': 91.6
    }),
    ('L4', {
        'bfloat16': 121.0,
        'tf32': 60.0,
        'float32': 30.3
    }),
    ('A10', {
        'bfloat16': 125.0,
        'tf32': 62.5,
        'float32': 31.2
    }),
    ('V100', {
        'float32': 15.7
    }),
    ('T4', {
        'float32': 8.1
    }),
    ('TPU v4', {
        'bfloat16': 275.0
    }),
    ('TPU v5 lite', {
        'bfloat16': 197.0
    }),
    ('TPU v5e', {
        'bfloat16': 197.0
    }),
    ('TPU v5p', {
        'bfloat16': 459.0
    }),
    ('TPU v5', {
        'bfloat16': 459.0
    }),
    ('TPU v6', {
        'bfloat16': 918.0
    }),
)

# The NCSNv2 CIFAR-10 evaluation: 50,000 samples, L = 232 levels x T = 5
# Langevin steps, plus the final denoising evaluation.
FID_SAMPLES = 50_000
FID_EVALS_PER_SAMPLE = 232 * 5 + 1


def peak_tflops(device_kind: str) -> Optional[dict]:
  """The peaks of the first table entry named in `device_kind`, or None."""
  for name, peaks in PEAK_TFLOPS:
    if name.lower() in device_kind.lower():
      return dict(peaks)
  return None


def _peaks_for(device_kind: str, dtype: str) -> dict:
  """{peak name: TFLOP/s} that a run in `dtype` is set against."""
  peaks = peak_tflops(device_kind) or {}
  names = ('float32', 'tf32') if dtype == 'float32' else (dtype,)
  return {n: peaks[n] for n in names if n in peaks}


def fraction_of_peak(flop_per_s: float, device_kind: str, dtype: str,
                     devices: int = 1) -> dict:
  """Achieved FLOP/s over the peak(s) of `devices` chips ({} if unknown).

  Args:
    flop_per_s: achieved model FLOP/s (`flops.count` x items per second).
    device_kind: jax's `device_kind` of the chips.
    dtype: the compute dtype; float32 is set against both the float32 and
      the TF32 peak.
    devices: how many chips produced `flop_per_s`.

  Returns:
    {'of_<peak>_peak': fraction} for each peak of the chip.
  """
  return {f'of_{n}_peak': flop_per_s / (devices * tflops * 1e12)
          for n, tflops in _peaks_for(device_kind, dtype).items()}


def fid50k_seconds(score_evals_per_s: float,
                   samples: int = FID_SAMPLES,
                   evals_per_sample: int = FID_EVALS_PER_SAMPLE) -> float:
  """Sampling time of the FID-50k evaluation (Inception features excluded).

  seconds = samples x (L T + 1) / (score evaluations per second), with the
  rate measured at the sampling batch used.
  """
  return samples * evals_per_sample / score_evals_per_s


def fid50k_bound_seconds(flops_per_eval: float, device_kind: str,
                         dtype: str) -> dict:
  """The FID-50k sampling time if one chip ran at its peak ({} if unknown).

  seconds >= samples x (L T + 1) x FLOPs per score evaluation / peak FLOP/s,
  a lower bound for each peak `dtype` is set against (float32: float32 and
  TF32).

  Args:
    flops_per_eval: model FLOPs of one score evaluation (one image).
    device_kind: jax's `device_kind`.
    dtype: the sampler's compute dtype.

  Returns:
    {peak name: seconds}.
  """
  work = FID_SAMPLES * FID_EVALS_PER_SAMPLE * flops_per_eval
  return {n: work / (tflops * 1e12)
          for n, tflops in _peaks_for(device_kind, dtype).items()}


def fid50k_formula(score_evals_per_s: float, batch: int) -> str:
  """The FID-50k sampling time as a one-line formula with its numbers."""
  seconds = fid50k_seconds(score_evals_per_s)
  return (f'FID-50k sampling: {FID_SAMPLES} x ({FID_EVALS_PER_SAMPLE - 1} + '
          f'1 denoise) score evaluations / {score_evals_per_s:.4g} per s '
          f'(sampling batch {batch}) = {seconds:.4g} s = '
          f'{seconds / 3600:.3g} h')
