"""Structural figures of the package (issue 25's before/after table): modules, lines, import cycles, upward
imports, imports inside functions, ``make_params`` call sites, the longest functions.

    python scripts/architecture_figures.py [CHECKOUT]    # default: this checkout

Run it on another checkout (e.g. ``git worktree add /tmp/old bf202ae``) to compare. The layer of a module is
read from its path, with the names of older layouts mapped to today's layers (``bench_harness/suite.py`` is
configuration, ``running/ablations.py`` was a running module importing the contract...). The layers are enforced
by import-linter (``pyproject.toml``); this script only counts.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

LAYERS = ["ground", "contract", "config", "results", "running", "slurm", "api", "conformance", "cli"]
GROUND = {"errors", "identity", "paths", "atomic", "files", "locks", "diskspace", "interrupts", "processes",
          "safe_yaml", "validation", "version"}


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "bench_harness" or len(parts) == 1:
        return None
    head = parts[1]
    if head in GROUND:
        return "ground"
    if head in ("suite", "config"):
        return "config"
    if head == "contract":
        return "conformance" if parts[-1] == "conformance" else "contract"
    return head if head in LAYERS else None


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[0] == "plugins":
        parts[0] = "bench_harness_plugins"
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".")
    base = base if is_package else base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def main(root: Path) -> None:
    files = sorted([*root.glob("bench_harness/**/*.py"), *root.glob("plugins/**/*.py")])
    modules = {module_name(root, f): f for f in files}
    edges: dict[str, set[str]] = defaultdict(set)
    inner_imports = 0
    make_params_sites = []
    functions = []
    lines = 0
    for mod, path in modules.items():
        text = path.read_text()
        lines += text.count("\n")
        tree = ast.parse(text)
        parents: dict[ast.AST, ast.AST] = {}
        for parent in ast.walk(tree):
            for child in ast.iter_child_nodes(parent):
                parents[child] = parent
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                functions.append((node.end_lineno - node.lineno + 1, f"{path.relative_to(root)}:{node.name}"))
            if (isinstance(node, ast.Call)
                    and getattr(node.func, "attr", getattr(node.func, "id", None)) == "make_params"):
                make_params_sites.append(f"{path.relative_to(root)}:{node.lineno}")
            if not isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            up = parents.get(node)
            while up is not None and not isinstance(up, (ast.FunctionDef, ast.AsyncFunctionDef)):
                up = parents.get(up)
            if up is not None:
                inner_imports += 1
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                base = resolve(mod, path.name == "__init__.py", node)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != mod:
                    edges[mod].add(target)
    core = [m for m in modules if m.startswith("bench_harness.") or m == "bench_harness"]
    upward = sorted((m, t) for m in core for t in edges[m]
                    if layer_of(m) and layer_of(t) and LAYERS.index(layer_of(t)) > LAYERS.index(layer_of(m)))
    cycles = strongly_connected([m for m in modules], edges)
    deep_plugin_imports = sorted((m, t) for m in modules if m.startswith("bench_harness_plugins")
                                 for t in edges[m] if t.startswith("bench_harness.") )
    functions.sort(reverse=True)
    print(f"checkout: {root}")
    print(f"modules: {len(modules)} ({len(core)} core, {len(modules) - len(core)} plugins); lines: {lines}")
    print(f"import cycles: {len(cycles)} ({', '.join(str(len(c)) + ' modules' for c in cycles) or 'none'})")
    for c in cycles:
        print("   ", " ".join(sorted(c)))
    print(f"upward imports (core): {len(upward)}")
    for m, t in upward:
        print(f"    {m} -> {t}")
    print(f"plugin imports below the public package: {len(deep_plugin_imports)}")
    print(f"imports inside functions: {inner_imports}")
    print(f"make_params call sites: {len(make_params_sites)} ({', '.join(make_params_sites)})")
    print("longest functions: " + ", ".join(f"{name} {n}" for n, name in functions[:6]))


def strongly_connected(nodes: list[str], edges: dict[str, set[str]]) -> list[set[str]]:
    """Tarjan's algorithm; the components with more than one module (the import cycles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []
    sys.setrecursionlimit(10_000)

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(comp)

    for v in nodes:
        if v not in index:
            visit(v)
    return out


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]).resolve())
