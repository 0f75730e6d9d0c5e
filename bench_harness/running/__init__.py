"""Running a run: preparation, training, pruning calls, checkpoints, local executor, data and models."""
