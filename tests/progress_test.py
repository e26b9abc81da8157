"""Tests of the progress lines (rate, ETA, final count) with a fake clock."""

import io

from absl.testing import absltest

from ncsn_jax import console


class FakeClock:

  def __init__(self):
    self.t = 100.0

  def __call__(self):
    return self.t


class ProgressTest(absltest.TestCase):

  def _bar(self, total, tty=False, **kwargs):
    stream, clock = io.StringIO(), FakeClock()
    bar = console.Progress(total,
                           'sampling',
                           unit='samples',
                           every_s=5.0,
                           stream=stream,
                           clock=clock,
                           enabled=True,
                           tty=tty,
                           **kwargs)
    return bar, stream, clock

  def test_lines_every_few_seconds_with_rate_eta_and_final_count(self):
    bar, stream, clock = self._bar(1000)
    for _ in range(10):  # 100 samples per 2 s: 50 samples/s.
      clock.t += 2.0
      bar.update(100)
    bar.close()
    lines = stream.getvalue().splitlines()
    # Lines at t = 6, 12, 18 (every >= 5 s), then the final one.
    self.assertLen(lines, 4)
    self.assertEqual(
        lines[0], 'sampling: 300/1000 samples (30%), 50 samples/s, ETA 14.0s')
    self.assertEqual(
        lines[2], 'sampling: 900/1000 samples (90%), 50 samples/s, ETA 2.0s')
    self.assertEqual(lines[-1],
                     'sampling: 1000/1000 samples in 20.0s (50 samples/s)')

  def test_eta_in_minutes_and_slow_rates_per_unit(self):
    bar, stream, clock = self._bar(10)
    clock.t += 500.0  # The first unit compiles: not counted in the rate.
    bar.update(1)
    self.assertEqual(stream.getvalue(), '')
    clock.t += 130.0
    bar.update(1, extra='loss 0.5')
    self.assertEqual(
        stream.getvalue(),
        'sampling: 2/10 samples (20%), 130 s/sample, ETA 17:20, loss 0.5\n')

  def test_terminal_rewrites_one_line(self):
    bar, stream, clock = self._bar(4, tty=True)
    for _ in range(4):
      clock.t += 1.0
      bar.update()
    bar.close()
    out = stream.getvalue()
    self.assertEqual(out.count('\n'), 1)  # Only the final line ends one.
    # Updates 2 and 3 (the first one marks the start of the rate, the
    # fourth is the total: the final line reports it).
    self.assertEqual(out.count('\r'), 3)
    self.assertTrue(
        out.endswith('sampling: 4/4 samples in 4.0s '
                     '(1 samples/s)\n'))

  def test_close_once_and_disabled_prints_nothing(self):
    bar, stream, clock = self._bar(2)
    clock.t += 1.0
    bar.update(2)
    bar.close()
    bar.close()
    self.assertLen(stream.getvalue().splitlines(), 1)
    quiet, stream, clock = self._bar(2)
    quiet.enabled = False
    clock.t += 10.0
    quiet.update(2)
    quiet.close()
    self.assertEqual(stream.getvalue(), '')

  def test_track_counts_every_item(self):
    stream, clock = io.StringIO(), FakeClock()

    def items():
      for i in range(3):
        clock.t += 10.0
        yield i

    out = list(
        console.track(items(),
                      3,
                      'sweep',
                      unit='checkpoints',
                      stream=stream,
                      clock=clock,
                      enabled=True,
                      tty=False))
    self.assertEqual(out, [0, 1, 2])
    lines = stream.getvalue().splitlines()
    self.assertEqual(
        lines[0], 'sweep: 2/3 checkpoints (67%), 10 s/checkpoint, '
        'ETA 10.0s')
    self.assertEqual(lines[-1], 'sweep: 3/3 checkpoints in 30.0s '
                     '(10 s/checkpoint)')

  def test_resumed_run_counts_rate_from_here_and_keeps_extra(self):
    bar, stream, clock = self._bar(1000, initial=600)
    clock.t += 10.0
    bar.update(100, extra='loss 0.25')
    clock.t += 10.0
    bar.update(100)
    bar.close()
    lines = stream.getvalue().splitlines()
    self.assertEqual(lines, [
        'sampling: 800/1000 samples (80%), 10 samples/s, ETA 20.0s, '
        'loss 0.25',
        'sampling: 800/1000 samples in 20.0s (10 samples/s), loss 0.25'
    ])

  def test_slow_rate_names_one_unit(self):
    self.assertEqual(console._rate(2, 10.0, 'batches'), '5 s/batch')
    self.assertEqual(console._rate(2, 10.0, 'rows'), '5 s/row')
    self.assertEqual(console._rate(20, 10.0, 'batches'), '2 batches/s')

  def test_format_duration(self):
    self.assertEqual(console.format_duration(4.24), '4.2s')
    self.assertEqual(console.format_duration(125), '2:05')
    self.assertEqual(console.format_duration(3725), '1:02:05')


if __name__ == '__main__':
  absltest.main()
