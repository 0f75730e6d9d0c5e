"""Built-in plugins of bench-harness (pruners, models, data sets).

Installed as the package ``bench_harness_plugins`` and discovered through the ``bench_harness`` entry-point
group, exactly like a third-party plugin; the core never imports this package by name.
"""
