"""Training: state, optimiser, losses, the pure step, host loop, checkpoints."""
