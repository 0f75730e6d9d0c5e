"""AutoSparse: the pruner, its teacher and predictor stages, the predictor networks."""
