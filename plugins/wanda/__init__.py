"""Wanda (Sun et al. 2023): post-training pruning by weight magnitude times input activation norm."""
