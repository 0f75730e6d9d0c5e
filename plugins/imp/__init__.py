"""Iterative magnitude pruning with rewinding (IMP) and its level schedules."""
