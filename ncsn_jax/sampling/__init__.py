"""Sampling: annealed Langevin dynamics, its variants, sample mode, figures."""
