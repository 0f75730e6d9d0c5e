"""Reference pruners (dense, random, magnitude) and the pruning-at-initialization baselines (SNIP, GraSP,
SynFlow)."""
