"""Evaluation: eval mode and checkpoint sweeps, sample-quality metrics."""
