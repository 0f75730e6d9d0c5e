"""PX: path eXclusion pruning at initialization, with its ReLU gates."""
