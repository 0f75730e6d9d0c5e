"""During-training pruners: gradual magnitude pruning, dynamic sparse training (SET, RigL) and the static-sparse control."""
