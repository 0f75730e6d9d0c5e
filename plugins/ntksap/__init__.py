"""NTK-SAP (Wang et al. 2023): pruning at initialization by the neural tangent kernel spectrum."""
