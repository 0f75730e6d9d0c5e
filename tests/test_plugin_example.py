"""One plugin example (issue 29): the README's and docs/writing-a-pruner.md's are the same code, import only the
top-level package, register through the hook, and pass the conformance kit; the guide's pyproject.toml is the
example package's; a score pruner whose Params has no tie_rule thresholds as the built-ins do."""
import ast
import re
import types
from dataclasses import dataclass
from pathlib import Path

import torch

from bench_harness import ScorePruner, param
from bench_harness.contract.plugins import Registry

ROOT = Path(__file__).resolve().parent.parent


def _block(path: Path, lang: str, first_line: str) -> str:
    blocks = [b for b in re.findall(rf"```{lang}\n(.*?)```", path.read_text(), re.S) if b.startswith(first_line)]
    assert len(blocks) == 1, f"{path}: {len(blocks)} ```{lang} blocks start with {first_line!r}"
    return blocks[0]


def _example() -> str:
    readme = _block(ROOT / "README.md", "python", "# my_package/pruners.py")
    guide = _block(ROOT / "docs" / "writing-a-pruner.md", "python", "# my_package/pruners.py")
    assert readme == guide, "the README's plugin example and docs/writing-a-pruner.md's differ"
    return readme


def test_the_readme_and_the_guide_show_one_example_importing_the_top_level_package_only():
    tree = ast.parse(_example())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    assert imported == {"dataclasses", "bench_harness"}, imported


def test_the_example_registers_and_passes_the_conformance_kit():
    from bench_harness.conformance import check_pruner

    module = types.ModuleType("my_package.pruners")
    exec(compile(_example(), "README.md: my_package/pruners.py", "exec"), module.__dict__)
    registry = Registry(extra_plugins=[("my_pruners", module)])
    cls = registry.get("pruner", "power_magnitude")
    assert cls.Params().tie_rule == "reference" and cls.description
    failed = [(c.name, c.detail) for c in check_pruner(cls, sparsities=(0.5,), models=("mlp", "conv_bn"))
              if not c.passed]
    assert not failed, failed


def test_the_guide_shows_the_example_package_s_pyproject():
    guide = _block(ROOT / "docs" / "writing-a-pruner.md", "toml", "[build-system]")
    package = (ROOT / "tests" / "fixtures" / "bench_plugin_example" / "pyproject.toml").read_text()
    assert guide == package and 'dependencies = ["bench-harness"]' in package


def test_a_params_without_tie_rule_thresholds_as_the_built_ins_do():
    @dataclass
    class Bare:  # a plugin's own Params, not subclassing ScoreParams
        scope: str = param("global", "scope")
        rounds: int = param(1, "rounds")

    class Ties(ScorePruner):
        name = "ties"
        Params = Bare

        def score(self, model, ctx):
            return {n: torch.ones_like(p) for n, p in ctx.prunable.items()}  # every score tied

    assert Ties()._tie_rule() == "reference"
    import bench_harness

    def tied_model():
        model = torch.nn.Sequential(torch.nn.Linear(10, 10))
        with torch.no_grad():
            model[0].weight.fill_(1.0)  # magnitude scores tie everywhere, as the Ties pruner's do
        return model

    plugin = bench_harness.prune(tied_model(), Ties, 0.5)["0.weight"]
    assert torch.equal(plugin, bench_harness.prune(tied_model(), "magnitude", 0.5)["0.weight"])
    assert not torch.equal(plugin, bench_harness.prune(tied_model(), "magnitude", 0.5, tie_rule="exact")["0.weight"])
