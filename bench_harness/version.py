"""The version of bench-harness (recorded in every result row)."""
__version__ = "0.1.0"
