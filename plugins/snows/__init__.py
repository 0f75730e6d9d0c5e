"""SNOWS and the post-training pruners it is compared with (mp, mp_ls, sparsegpt): masks, the layer-wise
reconstruction walk, the network chains and the solvers."""
