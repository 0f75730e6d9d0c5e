"""Built-in pruner plugin module (being written; registers nothing yet)."""
from bench_harness import hookimpl


@hookimpl
def bench_register_pruners():
    return []
