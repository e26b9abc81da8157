"""parity_notes.json: what each recorded array means, and the official
conventions a faithful reimplementation must follow.

Images are NHWC float32 (the official NCHW tensors transposed), states and
draws are stacked in the order the official code made them (leading axis =
step), parameters are in the official layout (OIHW, official key order).
Shapes and dtypes are read from the written files.
"""

import json
import os

import numpy as np

_SETTINGS = ('ngf, num_classes, sigma_begin, sigma_end, image_size, '
             'batch_size, anneal_power, lr, beta1, beta2, eps, '
             'weight_decay, amsgrad (the Adam param group of the init file), '
             'ema_rate (v2), init_step, torch_version: scalars')

_TRAIN_CONVENTIONS = [
    'The initial state is <kind>_train_init.pth (official layout, legacy '
    'serialisation): import it with official_checkpoint.convert / run.py '
    '--mode=import. It holds 2 warm-up steps of Adam moments (torch step '
    '2); for NCSNv2 the EMA shadow is offset from the weights by 0.02 '
    'N(0, 1) so that the 0.999 updates show above float32 round-off.',
    'Step k (k = 0, 1, 2) of the official runner: batch[k] -> (v1 only) x = '
    'batch / 256 * 255 + u / 256 with u = dequant_u[k] = torch.rand_like '
    '(drawn first), then labels[k] = torch.randint(0, L, (B,)), then '
    'noise[k] = torch.randn_like(x) (inside anneal_dsm_score_estimation); '
    'perturbed = x + sigmas[labels] * noise; loss = mean over the batch of '
    '0.5 * sum((score - target)^2) * sigma^anneal_power with target = '
    '-noise / sigma; then zero_grad, backward, Adam step, and (v2) '
    'EMAHelper.update: shadow = (1 - mu) * param + mu * shadow, after the '
    'optimizer step, on every parameter.',
    'NCSNv2 (cifar10.yml) has no dequantisation: data_transform is the '
    'identity, the loss input is batch[k] itself. Its loss draws labels '
    'then noise. v1 draws u, labels, noise in that order.',
    'Adam is torch.optim.Adam (coupled L2 weight decay, eps added to '
    'sqrt(v_hat)); the states after each step are the runner\'s own '
    'checkpoint_<step>.pth snapshots.',
    'losses[k] is the loss the official code logged at step k (float32).',
]

_TRAIN_STATES = {
    'params': '[3, P] float32: the weights after steps 1..3, each the '
              'concatenation, in the official order of `keys`, of the '
              'flattened OIHW tensors (no sigmas buffer)',
    'exp_avg': '[3, P]: Adam first moments after each step (same layout)',
    'exp_avg_sq': '[3, P]: Adam second moments after each step',
    'ema': '[3, P] (v2 only): the EMA shadow after each step',
    'adam_step': '[3]: torch Adam `step` after each step (3, 4, 5)',
    'global_step': '[3]: the runner\'s step counter (v2: 3, 4, 5 -- the '
                   'file\'s step was 2; v1 restarts at 1: 1, 2, 3)',
    'keys': '[K] str: state-dict keys without `module.`, official order',
    'ndims': '[K] int32: rank of each tensor',
    'shapes': '[K, 4] int32: shape of each tensor, zero-padded to 4; cut '
              'a flat row with np.split(row, np.cumsum(sizes)[:-1]) where '
              'sizes = prod(shapes[i, :ndims[i]])',
}

_SAMPLER_COMMON = {
    'x0': '[B, 32, 32, 3]: the initial state (torch.rand, data_transform '
          'is the identity)',
    'sigmas': '[L]: the noise levels as the official sampler got them '
              '(v1: float64 NumPy from AnnealRunner.test; v2: float32 '
              'NumPy from get_sigmas(config).cpu().numpy())',
    'step_lr': 'eps', 'n_steps_each': 'T',
    'step_sizes': '[L] float64: step_lr * (sigma_i / sigma_L)^2 as the '
                  'official code computed it (v1 in float64, v2 in float32 '
                  'with NumPy 2 promotion)',
}

NOTES = {
    'ncsnv2_train_draws.npz': dict(
        what='three official NCSNv2 training steps (NCSNRunner.train '
             'resumed from ncsnv2_train_init.pth): inputs and draws',
        arrays={
            'batch': '[3, B, 32, 32, 3]: the batches the data loader gave '
                     '(k / 255), one per step; also the loss input',
            'labels': '[3, B] int32: torch.randint noise labels per step',
            'noise': '[3, B, 32, 32, 3]: torch.randn_like standard normal '
                     'z per step (the perturbation is sigma * z)',
            'losses': '[3]: the official loss of each step',
            'sigmas': '[L] float32: the model\'s sigmas buffer',
            'settings': _SETTINGS,
        },
        conventions=_TRAIN_CONVENTIONS),
    'ncsnv2_train_states.npz': dict(
        what='NCSNv2 parameters, Adam moments and EMA after each step',
        arrays=_TRAIN_STATES),
    'ncsn_train_draws.npz': dict(
        what='three official NCSN v1 training steps (AnnealRunner.train '
             'resumed from ncsn_train_init.pth): inputs and draws',
        arrays={
            'batch': '[3, B, 32, 32, 3]: the raw batches (k / 255)',
            'dequant_u': '[3, B, 32, 32, 3]: torch.rand_like draws u',
            'dequantized': '[3, B, 32, 32, 3]: batch / 256 * 255 + u / 256, '
                           'the loss input',
            'labels': '[3, B] int32', 'noise': '[3, B, 32, 32, 3]: z',
            'losses': '[3]', 'sigmas': '[L] float32 (no buffer in v1 '
                                       'models; the runner\'s tensor)',
            'settings': _SETTINGS,
        },
        conventions=_TRAIN_CONVENTIONS + [
            'v1 has no EMA; its optimizer is AnnealRunner.get_optimizer '
            '(anneal.yml: lr 1e-3, no eps given: torch\'s 1e-8).']),
    'ncsn_train_states.npz': dict(
        what='NCSN v1 parameters and Adam moments after each step',
        arrays={k: v for k, v in _TRAIN_STATES.items() if k != 'ema'}),
    'sampler_ncsn.npz': dict(
        what='AnnealRunner.anneal_Langevin_dynamics (ermongroup/ncsn), '
             'L = 3, T = 2, model ncsn_sampler.pth',
        arrays=dict(_SAMPLER_COMMON, **{
            'noise': '[L*T, B, 32, 32, 3]: torch.randn_like z of each step',
            'states': '[L*T, B, 32, 32, 3]: the chain state at the start '
                      'of each step (unclamped; states[0] = x0)',
            'returned': '[L*T, B, 32, 32, 3]: what the function returned: '
                        'clamp(states[k], 0, 1)',
        }),
        conventions=[
            'Per step: record clamp(x, 0, 1) of the current state, draw z '
            '(before the score), x <- x + a * s(x, i) + sqrt(2 a) * z with '
            'a = step_sizes[i], labels i for every chain.',
            'The returned list holds the L*T states before each update, '
            'clamped; the state after the last update is not returned; no '
            'denoising step; the chain itself is never clamped.',
        ]),
    'sampler_ncsnv2.npz': dict(
        what='models.anneal_Langevin_dynamics (ermongroup/ncsnv2) with '
             'final_only=True, denoise=True, L = 3, T = 2, model '
             'ncsnv2_sampler.pth',
        arrays=dict(_SAMPLER_COMMON, **{
            'noise': '[L*T, B, 32, 32, 3]: torch.randn_like z of each step',
            'score_inputs': '[L*T + 1, B, 32, 32, 3]: every input of the '
                            'score network: [0] = x0, [k] = the state after '
                            'step k - 1, [L*T] = the input of the denoising '
                            'call (the state after the last step)',
            'score_labels': '[L*T + 1, B] int32: the labels of those calls',
            'returned': '[1, B, 32, 32, 3]: the returned list (final_only): '
                        'x + sigma_L^2 s(x, L - 1) of the last state',
        }),
        conventions=[
            'Per step: score s(x, i) first, then z = torch.randn_like, '
            'x <- x + a * s + sqrt(2 a) * z.',
            'final_only=False would return the L*T states after each update '
            'plus the denoised state (L*T + 1 entries); final_only=True '
            'returns [denoised final state] only. No clamping anywhere.',
            'Denoising: one score call at label L - 1, x + sigma_L^2 s(x), '
            'no noise.',
        ]),
    'inpainting_ncsnv2.npz': dict(
        what='models.anneal_Langevin_dynamics_inpainting (ermongroup/'
             'ncsnv2), right half missing, 2 references x 1 completion, '
             'L = 3, T = 2, model ncsnv2_sampler.pth',
        arrays=dict(_SAMPLER_COMMON, **{
            'refer': '[R, 32, 32, 3]: the reference images (data space, '
                     'not data_transform-ed, as NCSNRunner.sample passes '
                     'them); chain r * C + c completes reference r',
            'x0': '[R*C, 32, 32, 3]: the initial state (x_mod viewed as '
                  '(R*C, 3, H, W))',
            'known_noise': '[L*T, R*C, 32, 16, 3]: the standard normal '
                           'draws for the known (left) half, one per step',
            'noise': '[L*T, R*C, 32, 32, 3]: the Langevin standard normal '
                     'draws',
            'returned': '[L*T, R*C, 32, 32, 3]: the returned list (on CPU: '
                        'the state after the known half was written, i.e. '
                        'the score network\'s input at each step)',
        }),
        conventions=[
            'Per step (not per level): the known half is re-noised: '
            'x[..., :W/2] <- refer[..., :W/2] + sigma_i * known_noise '
            '(drawn first), then z = randn_like(x) (second draw), then '
            'the score of that x, x <- x + a * s + sqrt(2 a) * z. The known '
            'half is not rewritten after the update.',
            'Returned: L*T entries, one per step, none after the last '
            'update. On CPU each entry is the very tensor the step wrote '
            'into (`.to(\'cpu\')` makes no copy), so it holds the state '
            'with the known half replaced; on a GPU it would be the state '
            'before the replacement. No denoising, no clamping.',
            'ermongroup/ncsn (v1) inpainting differs: the known half is '
            'noised once per level and written back after every update; '
            'its returned states are clamped (not recorded here).',
        ]),
    'transforms.npz': dict(
        what='official data_transform / inverse_data_transform '
             '(ermongroup/ncsnv2 datasets/__init__.py), dequantisation and '
             'the CelebA transform on fixed inputs',
        arrays={
            'x': '[2, 8, 8, 3]: data-space input (k / 255, with exact 0, 1)',
            'z': '[2, 8, 8, 3]: model-space input of the inverse (N(0, 9))',
            '<mode>_forward': 'data_transform(x), mode plain | rescaled | '
                              'logit',
            '<mode>_inverse': 'inverse_data_transform(z) (clamped to [0, 1])',
            '<mode>_roundtrip': 'inverse_data_transform(<mode>_forward)',
            'uniform_draw': 'u = torch.rand_like(x)',
            'uniform_dequantized': 'x / 256 * 255 + u / 256',
            'gaussian_draw': 'n = torch.randn_like(x)',
            'gaussian_dequantized': 'x + 0.01 n',
            'celeba_image': '[218, 178, 3] uint8: the fixed input image',
            'celeba_crop': '[140, 140, 3] uint8: CenterCrop(140)',
            'celeba_crop_corner': '[2] int32: (top, left) of that crop',
            'celeba_64': '[64, 64, 3]: CenterCrop(140), Resize(64), '
                         'ToTensor (NCSNv2 celeba.yml)',
            'celeba_32': '[32, 32, 3]: the same with Resize(32) (NCSN v1)',
            'celeba_method': 'torchvision, or PIL with torchvision\'s PIL '
                             'semantics (see torch_fixture_transforms.py)',
        },
        conventions=[
            'With rescaled and logit_transform both set the official code '
            'takes rescaled (elif); ncsn_jax refuses the combination.',
            'Dequantisation comes before rescale / logit in '
            'data_transform.',
        ]),
    'export_check.json': dict(
        what='run.py --mode=export files checked with torch (see '
             'torch_fixture_export.py)', arrays={}, conventions=[]),
}


def _shapes(path: str) -> dict:
  if not path.endswith('.npz'):
    return {}
  with np.load(path) as data:
    return {k: f'{data[k].dtype} {list(data[k].shape)}' for k in data.files}


def write(out_dir: str) -> None:
  notes = {}
  for name, note in NOTES.items():
    path = os.path.join(out_dir, name)
    if os.path.exists(path):
      notes[name] = dict(note, stored=_shapes(path))
  with open(os.path.join(out_dir, 'parity_notes.json'), 'w') as f:
    json.dump(notes, f, indent=1)
    f.write('\n')
