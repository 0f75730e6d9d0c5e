"""The built-in providers: models (and their architectures) and data sets."""
