"""Built-in plugins of bench-harness (pruners, models, data sets).

Installed as the package ``bench_harness_plugins`` and discovered through the ``bench_harness`` entry-point
group, exactly like a third-party plugin; the core never imports this package by name. One folder per method
(``baselines``, ``imp``, ``px``, ``snows``, ``slt``, ``autosparse``: a method's pruners, solvers and models
together), the model and data set providers in ``providers``. Plugins import only the public package
``bench_harness`` (an import-linter contract, ``pyproject.toml``).
"""
