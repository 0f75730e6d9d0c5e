"""Model architectures of the built-in model plugin."""
