"""Classifier-based sample scores for the embedded scikit-learn digits data.

The Inception network is meaningless for 8x8 digits, so a small MLP trained on
the real digits plays its part: its softmax gives an Inception-Score analogue
and its 128 hidden ReLU activations give the features of a Fréchet distance
and a KID. The classifier sees flattened images, so any image size works as
long as training and scoring use the same one. Images are float in [0, 1]
(clipped to it) or uint8; all maths is NumPy float64 through `metrics`.
"""

from typing import Optional
import warnings

import numpy as np
from sklearn import exceptions
from sklearn import neural_network
import threadpoolctl

from ncsn_jax.evaluation import metrics

HIDDEN_UNITS = 128


def _flatten_images(x) -> np.ndarray:
  """[N,...] float in [0, 1] (clipped) or uint8 -> float64 [N,D]."""
  x = np.asarray(x)
  if x.ndim < 2:
    raise ValueError(f'Expected images [N,H,W,C], got shape {x.shape}.')
  if x.dtype == np.uint8:
    x = x / 255.0
  return np.clip(x.reshape(x.shape[0], -1).astype(np.float64), 0.0, 1.0)


def train_digits_classifier(
    x_train, y_train, seed: int = 0,
    max_iter: int = 500) -> neural_network.MLPClassifier:
  """Fits a one-hidden-layer MLP (128 ReLU units, adam) to digit images.

  About 1 s for the 1,437 8x8 training images (it stops at sklearn's loss
  tolerance after ~270 epochs, ~98.6% test accuracy). BLAS is limited to one
  thread during the fit (process-wide, restored afterwards): with these tiny
  matrices more threads are much slower.

  Args:
    x_train: [N,H,W,1] float in [0, 1] (or uint8), flattened for the MLP.
    y_train: [N] integer labels 0..9.
    seed: `random_state` of the MLP (initialisation and batch order).
    max_iter: maximum number of epochs.

  Returns:
    The fitted `sklearn.neural_network.MLPClassifier`.
  """
  x = _flatten_images(x_train)
  y = np.asarray(y_train)
  if y.shape != (x.shape[0],):
    raise ValueError(f'Expected labels [{x.shape[0]}], got shape {y.shape}.')
  clf = neural_network.MLPClassifier(
      hidden_layer_sizes=(HIDDEN_UNITS,), activation='relu', solver='adam',
      max_iter=max_iter, random_state=seed)
  with threadpoolctl.threadpool_limits(limits=1), warnings.catch_warnings():
    warnings.simplefilter('ignore', exceptions.ConvergenceWarning)
    return clf.fit(x, y)


def classifier_features(clf: neural_network.MLPClassifier,
                        x) -> tuple[np.ndarray, np.ndarray]:
  """Class probabilities and hidden activations of images `x`.

  Args:
    clf: a classifier from `train_digits_classifier`.
    x: [N,H,W,1] float in [0, 1] (clipped) or uint8, same size as training.

  Returns:
    (probs [N,K], hidden [N,128]); K = number of training classes (10), and
    hidden = ReLU(x W0 + b0) computed from `clf.coefs_`/`clf.intercepts_`.
  """
  flat = _flatten_images(x)
  if flat.shape[1] != clf.n_features_in_:
    raise ValueError(
        f'Images have {flat.shape[1]} pixels but the classifier was trained '
        f'on {clf.n_features_in_}; score at the training image size.')
  if len(clf.coefs_) != 2 or clf.out_activation_ != 'softmax':
    raise ValueError('Expected a one-hidden-layer softmax MLPClassifier.')
  hidden = np.maximum(flat @ clf.coefs_[0] + clf.intercepts_[0], 0.0)
  logits = hidden @ clf.coefs_[1] + clf.intercepts_[1]
  logits -= logits.max(axis=1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(axis=1, keepdims=True), hidden


def _accuracy(clf, probs: np.ndarray, labels) -> float:
  """Fraction of rows of `probs` [M,10] whose argmax class is `labels` [M]."""
  labels = np.asarray(labels)
  if labels.shape != (probs.shape[0],):
    raise ValueError(f'Expected reference labels [{probs.shape[0]}], got '
                     f'shape {labels.shape}.')
  predicted = clf.classes_[probs.argmax(axis=1)]
  return float(np.mean(predicted == labels))


def digits_scores(clf: neural_network.MLPClassifier, samples, reference,
                  reference_labels: Optional[np.ndarray] = None,
                  splits: int = 1) -> dict[str, float]:
  """Scores generated digits against a reference set of real digits.

  The score analogue is `metrics.inception_score` of the classifier's
  probabilities with `splits=1` by default (tf-gan's single-split form: with
  a few hundred samples, 10 splits would make each marginal noisy). It lies in
  [1, 10]: high when each sample is confidently one digit and all digits are
  equally present. The Fréchet distance and KID (tf-gan blocks) compare the
  hidden features of samples and reference; both are 0 for identical sets and
  grow with the mismatch. FD is biased upwards for small sets, so compare
  numbers at equal sample counts.

  Args:
    clf: a classifier from `train_digits_classifier`.
    samples: [N,H,W,1] generated images, float in [0, 1] or uint8.
    reference: [M,H,W,1] real images (e.g. the test split), same size.
    reference_labels: optional [M] labels of `reference`.
    splits: number of IS splits.

  Returns:
    Dict of floats: 'score_analogue' and 'score_analogue_std' (samples),
    'reference_score_analogue', 'score_ratio' (samples / reference),
    'frechet_distance' (samples vs reference), 'kid' and 'kid_std', and
    'classifier_accuracy' on the reference set if `reference_labels` is given.
  """
  # Single-threaded BLAS: for 128-d features, thread start-up costs more than
  # it saves (10-50x slower on a busy 2-core machine).
  with threadpoolctl.threadpool_limits(limits=1):
    probs_s, hidden_s = classifier_features(clf, samples)
    probs_r, hidden_r = classifier_features(clf, reference)
    score, score_std = metrics.inception_score(probs_s, splits=splits)
    ref_score, _ = metrics.inception_score(probs_r, splits=splits)
    mu_s, sigma_s = metrics.mean_and_covariance(hidden_s)
    mu_r, sigma_r = metrics.mean_and_covariance(hidden_r)
    fd = metrics.frechet_distance(mu_s, sigma_s, mu_r, sigma_r)
    kid, kid_std = metrics.kernel_inception_distance(hidden_r, hidden_s)
  scores = {
      'score_analogue': score,
      'score_analogue_std': score_std,
      'reference_score_analogue': ref_score,
      'score_ratio': score / ref_score,
      'frechet_distance': fd,
      'kid': kid,
      'kid_std': kid_std,
  }
  if reference_labels is not None:
    scores['classifier_accuracy'] = _accuracy(clf, probs_r, reference_labels)
  return scores
