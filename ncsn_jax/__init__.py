"""ncsn_jax: noise-conditional score networks (NCSN, NCSNv2) in JAX/Flax."""
