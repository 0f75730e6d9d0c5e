"""Plugin discovery and the registry of pruners, models, data sets and metrics.

Plugins come from the ``bench_harness`` entry-point group, built-ins included. Entry points are loaded one
by one: an import error, or a registration hook that raises, becomes a warning naming the distribution, and
the other plugins load. Two plugins registering the same name is an error naming both distributions.

Environment switches:
- ``BENCH_HARNESS_DISABLE_PLUGIN_AUTOLOAD=1``: load only the built-in plugins of bench-harness itself.
- ``BENCH_HARNESS_PLUGINS=name1,name2``: allow-list of third-party plugins (entry-point or distribution
  names); built-ins always load.
- ``BENCH_HARNESS_BLOCK_PLUGINS=name1,...``: never load these (entry-point or distribution names).
"""
from __future__ import annotations

import copy
import os
import warnings
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

import pluggy

from bench_harness.contract import hookspecs
from bench_harness.errors import PluginConflictError, UnknownNameError

OWN_DISTRIBUTION = "bench-harness"


class PluginWarning(UserWarning):
    pass


@dataclass
class PluginInfo:
    name: str  # entry-point name
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)  # kind -> names
    error: str | None = None


@dataclass
class Entry:
    """One registered object with where it came from."""

    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str


def _split_env(name: str) -> set[str]:
    return {s.strip() for s in os.environ.get(name, "").split(",") if s.strip()}


def _dist_name(ep: metadata.EntryPoint) -> tuple[str, str]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return "unknown", "unknown"
    return dist.metadata["Name"], dist.version


def _moved_hint(exc: BaseException) -> str:
    """For an import of one of the harness's inner modules that does not exist (they move: issue 25 moved the
    data helpers and the built-in plugins), where plugins import from instead."""
    missing = getattr(exc, "name", None) if isinstance(exc, ImportError) else None
    if not missing or "." not in missing or missing.split(".")[0] not in ("bench_harness", "bench_harness_plugins"):
        return ""
    return (f". {missing} is one of the harness's inner modules, which move between versions: a plugin imports "
            f"only from the top-level package (`from bench_harness import Pruner, masking, ...`) and asks "
            f"ctx.services for data sets, models and other pruners (see docs/writing-a-pruner.md)")


def _normal(name: str) -> str:
    return name.lower().replace("_", "-")


KINDS = {
    "pruner": "bench_register_pruners",
    "model": "bench_register_models",
    "dataset": "bench_register_datasets",
    "metric": "bench_register_metrics",
}


def selected_entry_points(group: str = hookspecs.PROJECT_NAME) -> list[tuple[Any, str, str]]:
    """(entry point, distribution, version) of the plugins to load, the switches applied (see the module
    docstring); a distribution visible twice on sys.path counts once."""
    autoload = os.environ.get("BENCH_HARNESS_DISABLE_PLUGIN_AUTOLOAD", "") in ("", "0", "false")
    allow = {_normal(n) for n in _split_env("BENCH_HARNESS_PLUGINS")}
    block = {_normal(n) for n in _split_env("BENCH_HARNESS_BLOCK_PLUGINS")}
    seen, out = set(), []
    for ep in metadata.entry_points(group=group):
        dist, version = _dist_name(ep)
        if (dist, ep.name) in seen:  # the same distribution visible twice on sys.path
            continue
        seen.add((dist, ep.name))
        builtin = _normal(dist) == OWN_DISTRIBUTION
        names = {_normal(ep.name), _normal(dist)}
        if names & block:
            continue
        if not builtin and (not autoload or (allow and not names & allow)):
            continue
        out.append((ep, dist, version))
    return out


def find_entry(table: dict[str, Any], kind: str, name: str) -> Any:
    """The entry of ``name`` in a registry's table of ``kind`` (a prefix spec serves ``<prefix>:<name>``, e.g.
    ``torchvision:resnet18``); UnknownNameError listing the names a user may write (test-only ones left out).
    The imported registry and the registry's cache (contract/registry.py) both look up here."""
    if name in table:
        return table[name]
    if ":" in name:
        spec = table.get(name.split(":", 1)[0])
        if spec is not None and getattr(spec.obj, "prefix", False):
            return spec
    raise UnknownNameError(kind, name, [n for n, e in table.items() if not getattr(e.obj, "test_only", False)])


class Registry:
    """Loaded plugins and everything they register, looked up by name with 'did you mean' errors."""

    def __init__(self, extra_plugins: list[tuple[str, Any]] | None = None,
                 skip: frozenset[tuple[str, str]] = frozenset()) -> None:
        """``skip``: (distribution, entry-point name) of plugins not to load (the registry's cache reads their
        static declarations instead)."""
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginInfo] = {}
        self.entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._load_entry_points(skip)
        for name, module in extra_plugins or []:
            self._register(module, PluginInfo(name, "(in-process)", "", getattr(module, "__name__", name)))
        self.pm.check_pending()
        self._collect()

    # -- discovery -------------------------------------------------------------------------------------
    def _load_entry_points(self, skip: frozenset[tuple[str, str]] = frozenset()) -> None:
        for ep, dist, version in selected_entry_points():
            if (dist, ep.name) in skip:
                continue
            info = PluginInfo(ep.name, dist, version, ep.value)
            try:
                module = ep.load()
            except Exception as exc:  # one broken plugin must not stop the others
                info.error = f"{type(exc).__name__}: {exc}" + _moved_hint(exc)
                self.plugins[ep.name] = info
                warnings.warn(f"plugin {ep.name!r} from distribution {dist} {version} failed to import and is "
                              f"skipped: {info.error}", PluginWarning, stacklevel=2)
                continue
            self._register(module, info)

    def _register(self, module: Any, info: PluginInfo) -> None:
        if info.name in self.plugins and self.plugins[info.name].error is None:
            info.name = f"{info.distribution}:{info.name}"
        try:
            self.pm.register(module, name=info.name)
        except Exception as exc:
            info.error = f"{type(exc).__name__}: {exc}"
            warnings.warn(f"plugin {info.name!r} from distribution {info.distribution} could not be registered: "
                          f"{info.error}", PluginWarning, stacklevel=2)
        self.plugins[info.name] = info

    def _collect(self) -> None:
        for kind, hook_name in KINDS.items():
            hook = getattr(self.pm.hook, hook_name)
            for impl in hook.get_hookimpls():
                info = self.plugins[impl.plugin_name]
                try:
                    items = impl.function() or []
                except Exception as exc:
                    info.error = f"{hook_name} raised {type(exc).__name__}: {exc}"
                    warnings.warn(f"plugin {info.name!r} from distribution {info.distribution}: {info.error}; "
                                  f"its {kind}s are skipped", PluginWarning, stacklevel=2)
                    continue
                for obj in items:
                    self._add(kind, obj, info)

    def _add(self, kind: str, obj: Any, info: PluginInfo) -> None:
        name = getattr(obj, "name", None)
        if not name:
            warnings.warn(f"plugin {info.name!r} ({info.distribution}) registered a {kind} without a name: "
                          f"{obj!r}; skipped", PluginWarning, stacklevel=2)
            return
        if kind == "pruner":
            from bench_harness.contract.pruner import Pruner

            if not (isinstance(obj, type) and issubclass(obj, Pruner)):
                warnings.warn(f"plugin {info.name!r} ({info.distribution}) registered pruner {name!r} that is not "
                              f"a bench_harness.contract.pruner.Pruner subclass; skipped", PluginWarning, stacklevel=2)
                return
        existing = self.entries[kind].get(name)
        if existing is not None:
            raise PluginConflictError(
                f"{kind} {name!r} is registered twice: by plugin {existing.plugin!r} of distribution "
                f"{existing.distribution} and by plugin {info.name!r} of distribution {info.distribution}. "
                f"Uninstall one, or block one with BENCH_HARNESS_BLOCK_PLUGINS={info.name}.")
        self.entries[kind][name] = Entry(name, obj, info.name, info.distribution, info.version)
        info.registers.setdefault(kind, []).append(name)

    # -- lookup ------------------------------------------------------------------------------------------
    def entry(self, kind: str, name: str) -> Entry:
        return find_entry(self.entries[kind], kind, name)

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])

    def display_names(self) -> dict[str, str]:
        """Model and data set names → the display names their specs give ("lenet5" → "LeNet-5"), for figures and
        tables drawn from results, which hold only names; names without one are left out."""
        return {name: entry.obj.display_name for kind in ("model", "dataset")
                for name, entry in self.entries[kind].items() if getattr(entry.obj, "display_name", "")}

    def call_lifecycle(self, hook_name: str, **kwargs: Any) -> None:
        hook = getattr(self.pm.hook, hook_name)
        for impl in hook.get_hookimpls():
            try:  # each hook gets its own deep copies: what it changes in the run (its components' params
                #   dicts) or the row never reaches the run, later runs of this process or other hooks
                impl.function(**{k: copy.deepcopy(v) for k, v in kwargs.items() if k in impl.argnames})
            except (Exception, SystemExit) as exc:  # a hook calling sys.exit() must not end the sweep either
                warnings.warn(f"plugin {impl.plugin_name!r}: {hook_name} raised {type(exc).__name__}: {exc}",
                              PluginWarning, stacklevel=2)


_REGISTRY: Registry | None = None


def get_registry(refresh: bool = False) -> Registry:
    """The process-wide registry, built on first use."""
    global _REGISTRY
    if _REGISTRY is None or refresh:
        _REGISTRY = Registry()
    return _REGISTRY
