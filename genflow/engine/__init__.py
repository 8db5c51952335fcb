"""Training loop, evaluation, checkpoints, logging."""
