"""Tests for evaluation.digits_metrics on the real scikit-learn digits."""

from absl.testing import absltest
import numpy as np
from sklearn import datasets

from ncsn_jax.evaluation import digits_metrics

_NUM_TEST = 360


def _digits_split():
  """Fixed shuffled split of load_digits: ([N,8,8,1] in [0, 1], labels)."""
  digits = datasets.load_digits()
  images = (digits.images / 16.0)[..., None]
  perm = np.random.default_rng(0).permutation(len(images))
  images, labels = images[perm], digits.target[perm]
  return ((images[_NUM_TEST:], labels[_NUM_TEST:]),
          (images[:_NUM_TEST], labels[:_NUM_TEST]))


class DigitsMetricsTest(absltest.TestCase):

  @classmethod
  def setUpClass(cls):
    super().setUpClass()
    (cls.x_train, cls.y_train), (cls.x_test, cls.y_test) = _digits_split()
    cls.clf = digits_metrics.train_digits_classifier(cls.x_train, cls.y_train)
    cls.noise = np.random.default_rng(1).uniform(size=cls.x_test.shape)

  def test_features_match_sklearn(self):
    probs, hidden = digits_metrics.classifier_features(self.clf, self.x_test)
    self.assertEqual(probs.shape, (_NUM_TEST, 10))
    self.assertEqual(hidden.shape, (_NUM_TEST, digits_metrics.HIDDEN_UNITS))
    self.assertGreaterEqual(hidden.min(), 0.0)
    np.testing.assert_allclose(
        probs, self.clf.predict_proba(self.x_test.reshape(_NUM_TEST, -1)),
        rtol=1e-10, atol=1e-12)

  def test_uint8_input_matches_float(self):
    x_uint8 = np.round(self.x_test * 255).astype(np.uint8)
    probs_u, _ = digits_metrics.classifier_features(self.clf, x_uint8)
    probs_f, _ = digits_metrics.classifier_features(self.clf, x_uint8 / 255.0)
    np.testing.assert_allclose(probs_u, probs_f)

  def test_real_test_split_scores_high(self):
    scores = digits_metrics.digits_scores(self.clf, self.x_test, self.x_train,
                                          reference_labels=self.y_train)
    self.assertGreater(scores['score_analogue'], 8.0)
    self.assertGreater(scores['reference_score_analogue'], 8.0)
    self.assertBetween(scores['score_ratio'], 0.9, 1.1)
    self.assertGreater(scores['classifier_accuracy'], 0.99)
    test_only = digits_metrics.digits_scores(
        self.clf, self.x_train, self.x_test, reference_labels=self.y_test)
    self.assertGreater(test_only['classifier_accuracy'], 0.95)

  def test_noise_and_single_class_score_low(self):
    noise = digits_metrics.digits_scores(self.clf, self.noise, self.x_test)
    self.assertLess(noise['score_analogue'], 3.0)
    self.assertLess(noise['score_ratio'], 0.35)
    threes = self.x_test[self.y_test == 3]
    single = digits_metrics.digits_scores(self.clf, threes, self.x_test)
    self.assertBetween(single['score_analogue'], 1.0, 2.0)

  def test_distances_separate_real_from_noise(self):
    real = digits_metrics.digits_scores(self.clf, self.x_test, self.x_train)
    noise = digits_metrics.digits_scores(self.clf, self.noise, self.x_train)
    self.assertLess(real['frechet_distance'], 0.05 * noise['frechet_distance'])
    self.assertLess(real['kid'], 0.05 * noise['kid'])
    self.assertLess(abs(real['kid']), 4 * real['kid_std'])
    self.assertGreater(noise['kid'], 10 * noise['kid_std'])

  def test_splits_and_clipping(self):
    ten = digits_metrics.digits_scores(self.clf, self.x_test, self.x_train,
                                       splits=10)
    self.assertGreater(ten['score_analogue'], 7.0)
    self.assertGreater(ten['score_analogue_std'], 0.0)
    clipped = digits_metrics.digits_scores(
        self.clf, 2 * self.x_test - 0.5, self.x_train)
    np.testing.assert_allclose(
        clipped['score_analogue'],
        digits_metrics.digits_scores(self.clf, np.clip(
            2 * self.x_test - 0.5, 0, 1), self.x_train)['score_analogue'])

  def test_errors(self):
    with self.assertRaisesRegex(ValueError, 'training image size'):
      digits_metrics.classifier_features(self.clf, np.zeros((2, 16, 16, 1)))
    with self.assertRaisesRegex(ValueError, 'labels'):
      digits_metrics.digits_scores(self.clf, self.x_test, self.x_test,
                                   reference_labels=self.y_test[:3])
    with self.assertRaisesRegex(ValueError, 'labels'):
      digits_metrics.train_digits_classifier(self.x_train, self.y_train[:5])

  def test_other_image_size(self):
    up = lambda x: np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 16x16.
    clf = digits_metrics.train_digits_classifier(up(self.x_train),
                                                 self.y_train, seed=1)
    scores = digits_metrics.digits_scores(clf, up(self.x_test),
                                          up(self.x_train))
    self.assertGreater(scores['score_analogue'], 8.0)


if __name__ == '__main__':
  absltest.main()
