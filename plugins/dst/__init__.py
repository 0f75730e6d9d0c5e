"""During-training pruners: gradual magnitude pruning, dynamic sparse training (SET, RigL), the static-sparse
control."""
