"""The plugin registry read without importing the plugins: their metadata, cached as JSON data.

The commands that compute nothing heavy (`bench validate`, `plugins`, `results`, `verify`, `run --dry-run`, ...)
need the plugins' names, versions, regimes and parameter declarations, not their code (which imports torch).
:func:`light_registry` reads them from a cache built from the loaded plugins once per *installed set*:

- the key is a hash of what decides the registry: every entry point of the ``bench_harness`` and
  ``bench_harness.metadata`` groups (distribution, version, name, target), the contents of the ``*.py`` files of
  the packages they point into and of bench-harness itself (found with ``importlib.util.find_spec``, which
  imports nothing), the Python and pydantic versions and the plugin switches (``BENCH_HARNESS_PLUGINS``,
  ``..._BLOCK_PLUGINS``, ``..._DISABLE_PLUGIN_AUTOLOAD``); it is computed afresh by every command and compared
  with the cache's;
- the cache is data, never code: JSON, validated field by field when read (a parameter declaration is rebuilt
  into a dataclass from a small vocabulary of types, :mod:`bench_harness.contract.params`); a file that is
  missing, damaged, of another key or format, not a regular file, not owned by the user or writable by others is
  not used: the plugins are imported as before (and the cache rebuilt; a note says why under ``-v``);
- it lives in ``$BENCH_HARNESS_REGISTRY_CACHE`` if set (a file path; ``off`` disables the cache), else in
  ``$XDG_CACHE_HOME/bench-harness/`` (default ``~/.cache/bench-harness/``), one file per Python environment and
  ``sys.path``; deleting it is always safe. It is written atomically (a temporary file renamed over it), so
  processes that build it at once each leave a complete file.

A plugin may declare its metadata statically (an entry point of the same name in the ``bench_harness.metadata``
group pointing to a declaration in a light module, see docs/writing-a-pruner.md): building the cache then reads
the declaration and does not import the plugin.

A pruner whose ``Params`` cannot be written down exactly (see :func:`~bench_harness.contract.params.describe_params`)
is validated by importing it: suites validated either way give the same run ids.
"""
from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import os
import stat
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Mapping

from bench_harness.contract.hookspecs import PROJECT_NAME
from bench_harness.contract.params import describe_params, params_class, validate_params

FORMAT = 2  # 2: pruners record has_stages (the SLURM submission plans stage jobs from the cache)
CACHE_ENV = "BENCH_HARNESS_REGISTRY_CACHE"
SWITCHES = ("BENCH_HARNESS_DISABLE_PLUGIN_AUTOLOAD", "BENCH_HARNESS_PLUGINS", "BENCH_HARNESS_BLOCK_PLUGINS")
KINDS = ("pruner", "model", "dataset", "metric")
_MAX_BYTES = 16 * 2**20  # a registry of thousands of plugins is far below


class StaleRegistry(Exception):
    """The cache cannot be used (the message says why)."""


# -- where, and for what -----------------------------------------------------------------------------------------
def cache_path() -> Path | None:
    """The cache file of this environment, or None when disabled (``BENCH_HARNESS_REGISTRY_CACHE=off``)."""
    explicit = os.environ.get(CACHE_ENV, "")
    if explicit.lower() in ("off", "0", "none", "false"):
        return None
    if explicit:
        return Path(explicit)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bench-harness"
    where = hashlib.sha256("\0".join([sys.executable, *sys.path]).encode()).hexdigest()[:16]
    return base / f"registry-{where}.json"


def _package_files(top: str) -> list[Path] | None:
    """The ``*.py`` files of a top-level package or module (imports nothing), or None when not found."""
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        files = []
        for location in spec.submodule_search_locations:
            for folder, dirs, names in os.walk(location):
                dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
                files.extend(Path(folder) / n for n in sorted(names) if n.endswith(".py"))
        return files
    return [Path(spec.origin)] if spec.origin and os.path.isfile(spec.origin) else None


def installed_set() -> dict[str, Any]:
    """What decides the registry's contents (see the module docstring); StaleRegistry when it cannot be known."""
    from importlib import metadata

    entry_points, tops = [], {"bench_harness"}
    for group in (PROJECT_NAME, STATIC_GROUP):
        for ep in metadata.entry_points(group=group):
            dist = getattr(ep, "dist", None)
            name, version = (dist.metadata["Name"], dist.version) if dist is not None else ("unknown", "unknown")
            entry_points.append([group, str(name), str(version), ep.name, ep.value])
            tops.add(ep.value.split(":")[0].split(".")[0])
    files: dict[str, str] = {}
    for top in sorted(tops):
        found = _package_files(top)
        if found is None:
            raise StaleRegistry(f"the files of package {top!r} cannot be found to check the cache")
        digest = hashlib.sha256()
        for path in found:
            digest.update(str(path).encode() + b"\0")
            try:
                digest.update(path.read_bytes())
            except OSError as exc:
                raise StaleRegistry(f"{path} cannot be read to check the cache: {exc}") from None
            digest.update(b"\0")
        files[top] = digest.hexdigest()
    try:
        pydantic_version = metadata.version("pydantic")
    except metadata.PackageNotFoundError:
        pydantic_version = ""
    return {"format": FORMAT, "python": sys.version, "pydantic": pydantic_version,
            "entry_points": sorted(entry_points), "files": files,
            "switches": {k: os.environ.get(k, "") for k in SWITCHES}}


def set_key(installed: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(installed, sort_keys=True).encode()).hexdigest()


# -- the cached data ---------------------------------------------------------------------------------------------
def _pruner_meta(cls: Any) -> dict[str, Any]:
    from bench_harness.contract.score_pruner import ScorePruner

    help_ = {}
    for pname, (default, text) in cls.param_help().items():
        help_[pname] = [repr(default), str(text)]
    return {"version": str(cls.version), "description": str(cls.description or ""), "regime": cls.regime.value,
            "sparsity_kind": cls.sparsity_kind.value, "granularity": cls.granularity.value,
            "requires": {"data": bool(cls.requires.data), "labels": bool(cls.requires.labels),
                         "pretrained": bool(cls.requires.pretrained)},
            "ignores_sparsity": bool(cls.ignores_sparsity), "has_scores": issubclass(cls, ScorePruner),
            "test_only": bool(getattr(cls, "test_only", False)), "params": describe_params(cls.Params),
            "param_help": help_, "has_stages": declares_stages(cls)}


def stages_problem(meta: Any, cls: Any) -> str | None:
    """What is wrong when the registry's metadata of a pruner (``meta``: from the cache or a static declaration)
    says it has no stages while its class declares some: a SLURM submission then plans no stage job, and every run
    produces the stage artifacts itself (inside its own time limit)."""
    if getattr(meta, "has_stages", True) or not declares_stages(cls):
        return None
    return (f"pruner {cls.name!r} overrides stages() but its metadata says it has none: a SLURM submission plans "
            f"no stage job for it; declare `stages: true` (or leave it out) in its static declaration")


def declares_stages(cls: Any) -> bool:
    """Whether a pruner class overrides ``Pruner.stages`` (a pruner that does not plans no stage artifact)."""
    from bench_harness.contract.pruner import Pruner

    own = getattr(cls, "stages", None)
    return getattr(own, "__func__", own) is not Pruner.stages.__func__


def _dataset_shape(spec: Any) -> list[int] | None:
    """[channels, image size, classes] of a data set whose shape is fixed (None: it depends on parameters or
    files, ``resolve``): what validation checks a transfer's source and a scoring data set against."""
    if getattr(spec, "resolve", None) is not None:
        return None
    try:
        return [int(spec.in_channels), int(spec.image_size), int(spec.num_classes)]
    except (AttributeError, TypeError, ValueError):
        return None


# -- static declarations: metadata a plugin declares without its code being imported ---------------------------
STATIC_GROUP = "bench_harness.metadata"
# Regime's values (a test checks)
REGIMES = ("none", "at_init", "post_training", "mask_learning", "iterative", "during_training")
SPARSITY_KINDS = ("exact", "target", "learned")
GRANULARITIES = ("unstructured", "n:m")
_DECLARED = {"pruners": "pruner", "models": "model", "datasets": "dataset", "metrics": "metric"}
_PRUNER_KEYS = {"name", "version", "description", "regime", "sparsity_kind", "granularity", "requires",
                "score_based", "params", "test_only", "stages"}


def _declared_pruner(item: Any) -> tuple[str, dict[str, Any]]:
    if not isinstance(item, Mapping) or not isinstance(item.get("name"), str) or not item["name"]:
        raise ValueError(f"a pruner is a mapping with a name, got {item!r}")
    unknown = sorted(set(item) - _PRUNER_KEYS)
    if unknown:
        raise ValueError(f"pruner {item['name']!r}: unknown keys {unknown} (known: {', '.join(sorted(_PRUNER_KEYS))})")
    regime = item.get("regime", "at_init")
    for key, value, allowed in (("regime", regime, REGIMES),
                                ("sparsity_kind", item.get("sparsity_kind", "exact"), SPARSITY_KINDS),
                                ("granularity", item.get("granularity", "unstructured"), GRANULARITIES)):
        if value not in allowed:
            raise ValueError(f"pruner {item['name']!r}: {key} {value!r} is not one of {', '.join(allowed)}")
    requires = dict(item.get("requires") or {})
    if set(requires) - {"data", "labels", "pretrained"} or not all(type(v) is bool for v in requires.values()):
        raise ValueError(f"pruner {item['name']!r}: requires is a mapping of data/labels/pretrained to true/false")
    requires = {k: requires.get(k, False) for k in ("data", "labels", "pretrained")}
    requires["pretrained"] = requires["pretrained"] or regime == "post_training"  # as Pruner derives it
    params = item.get("params")
    if params is None:
        params_desc: dict | None = {"class": "NoParams", "frozen": False, "config": None, "fields": []}
        params_cls: type = params_class(params_desc)
    elif isinstance(params, type) and dataclasses.is_dataclass(params):
        params_desc, params_cls = describe_params(params), params
    else:
        raise ValueError(f"pruner {item['name']!r}: params is a dataclass (fields made with bench_harness.param)")
    help_ = {}
    for f in dataclasses.fields(params_cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        help_[f.name] = [repr(default), str(f.metadata.get("help", ""))]
    stages = item.get("stages", True)  # unknown: the pruner is imported to plan its stages (a SLURM submission)
    if type(stages) is not bool:
        raise ValueError(f"pruner {item['name']!r}: stages is true or false (whether the pruner class overrides "
                         f"stages())")
    version = item.get("version", "1")
    if not isinstance(version, (str, int)) or isinstance(version, bool):
        raise ValueError(f"pruner {item['name']!r}: version is a string")
    return item["name"], {
        "version": str(version), "description": str(item.get("description", "")), "regime": regime,
        "sparsity_kind": item.get("sparsity_kind", "exact"), "granularity": item.get("granularity", "unstructured"),
        "requires": requires, "ignores_sparsity": regime == "none", "has_scores": bool(item.get("score_based")),
        "test_only": bool(item.get("test_only")), "params": params_desc, "param_help": help_,
        "has_stages": stages}


def declared(declaration: Any) -> dict[str, dict[str, Any]]:
    """A plugin's static declaration (``{"pruners": [...], "models": [...], "datasets": [...], "metrics": [...]}``,
    see docs/writing-a-pruner.md) as kind -> name -> metadata; ValueError naming what is wrong."""
    if callable(declaration):
        declaration = declaration()
    if not isinstance(declaration, Mapping):
        raise ValueError(f"a declaration is a mapping of {', '.join(_DECLARED)} to lists, got "
                         f"{type(declaration).__name__}")
    unknown = sorted(set(declaration) - set(_DECLARED))
    if unknown:
        raise ValueError(f"unknown keys {unknown} (known: {', '.join(_DECLARED)})")
    out: dict[str, dict[str, Any]] = {kind: {} for kind in KINDS}
    for key, kind in _DECLARED.items():
        items = declaration.get(key) or []
        if not isinstance(items, (list, tuple)):
            raise ValueError(f"{key} is a list")
        for item in items:
            if kind == "pruner":
                name, meta = _declared_pruner(item)
                out[kind][name] = {"prefix": False, "meta": meta}
            elif isinstance(item, str) and item:
                out[kind][item] = {"prefix": False}
            elif (isinstance(item, Mapping) and set(item) <= {"name", "prefix"} and isinstance(item.get("name"), str)
                  and type(item.get("prefix", False)) is bool):
                out[kind][item["name"]] = {"prefix": item.get("prefix", False)}
            else:
                raise ValueError(f"a {kind} is a name or {{name: ..., prefix: true/false}}, got {item!r}")
    return out


def static_declarations() -> tuple[dict[tuple[str, str], tuple[Any, str, dict]], list[str]]:
    """The plugins to load that declare their metadata statically (an entry point of the same name in the
    ``bench_harness.metadata`` group of the same distribution, ``module:attribute``, whose module is light):
    (distribution, name) -> (the plugin's entry point, version, declaration); and warnings for declarations that
    cannot be used (those plugins are imported instead)."""
    from importlib import metadata

    from bench_harness.contract.plugins import selected_entry_points

    selected = {(dist, ep.name): (ep, version) for ep, dist, version in selected_entry_points()}
    out: dict[tuple[str, str], tuple[Any, str, dict]] = {}
    warned: list[str] = []
    for mep in metadata.entry_points(group=STATIC_GROUP):
        dist = getattr(mep, "dist", None)
        key = (dist.metadata["Name"] if dist is not None else "unknown", mep.name)
        if key not in selected or key in out:
            continue
        try:
            out[key] = (*selected[key], declared(mep.load()))
        except Exception as exc:  # noqa: BLE001 - a broken declaration: the plugin is imported as usual
            warned.append(f"plugin {mep.name!r} from distribution {key[0]}: its static metadata ({mep.value}) "
                          f"cannot be used ({type(exc).__name__}: {exc}); the plugin is imported instead")
    return out, warned


def registry_data(registry: Any, installed: Mapping[str, Any], warned: list[str] | None = None,
                  static: Mapping[tuple[str, str], tuple[Any, str, dict]] | None = None) -> dict[str, Any]:
    """The cache's contents for a loaded :class:`~bench_harness.contract.plugins.Registry` and the static
    declarations of the plugins it did not load (``warned``: the warnings loading them gave, repeated whenever
    the cache is read)."""
    from bench_harness.errors import PluginConflictError

    plugins = [{"name": i.name, "distribution": i.distribution, "version": i.version, "module": i.module,
                "registers": {k: list(v) for k, v in i.registers.items()}, "error": i.error}
               for i in registry.plugins.values()]
    entries: dict[str, dict[str, Any]] = {}
    for kind in KINDS:
        entries[kind] = {}
        for name, e in registry.entries[kind].items():
            item = {"plugin": e.plugin, "distribution": e.distribution, "version": e.version,
                    "prefix": bool(getattr(e.obj, "prefix", False))}
            if kind == "pruner":
                item["meta"] = _pruner_meta(e.obj)
            if kind == "dataset":
                item["shape"] = _dataset_shape(e.obj)
            entries[kind][name] = item
    for (dist, name), (ep, version, decl) in sorted((static or {}).items()):
        plugin = name if name not in {p["name"] for p in plugins} else f"{dist}:{name}"
        registers = {kind: sorted(table) for kind, table in decl.items() if table}
        plugins.append({"name": plugin, "distribution": dist, "version": version, "module": ep.value,
                        "registers": registers, "error": None})
        for kind, table in decl.items():
            for entry_name, item in table.items():
                existing = entries[kind].get(entry_name)
                if existing is not None:
                    raise PluginConflictError(
                        f"{kind} {entry_name!r} is registered twice: by plugin {existing['plugin']!r} of "
                        f"distribution {existing['distribution']} and by plugin {plugin!r} of distribution {dist}. "
                        f"Uninstall one, or block one with BENCH_HARNESS_BLOCK_PLUGINS={plugin}.")
                entries[kind][entry_name] = {"plugin": plugin, "distribution": dist, "version": version, **item}
                if kind == "dataset":
                    entries[kind][entry_name].setdefault("shape", None)  # declared: checked when a run reads it
    return {"format": FORMAT, "key": set_key(installed), "installed": installed, "plugins": plugins,
            "entries": entries, "warnings": [str(w) for w in warned or []], "watched": []}


def _library_roots() -> list[str]:
    """Where the standard library and installed distributions live (their files change with a version, which
    the key holds)."""
    import site
    import sysconfig

    roots = {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    try:
        roots.update(site.getsitepackages())
    except AttributeError:  # a virtualenv's old site module
        pass
    roots.add(site.getusersitepackages())
    return sorted(os.path.realpath(r) + os.sep for r in roots if r)


def watched_files(before: set[str]) -> list[list[Any]]:
    """[path, size, mtime_ns] of the module files imported since ``before`` (names in sys.modules) that lie
    outside the standard library and the installed distributions: a plugin's helper module on the path (its
    defaults, its bounds), whose change the key cannot see. Checked whenever the cache is read."""
    roots = _library_roots()
    out = []
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if name in before or not isinstance(path, str):
            continue
        real = os.path.realpath(path)
        if any(real.startswith(r) for r in roots):
            continue
        try:
            st = os.stat(real)
        except OSError:
            continue
        out.append([real, st.st_size, st.st_mtime_ns])
    return sorted(out)


def check_watched(data: Mapping[str, Any]) -> None:
    """StaleRegistry when a watched module file (see :func:`watched_files`) changed or went since the cache was
    built."""
    for path, size, mtime in data["watched"]:
        try:
            st = os.stat(path)
        except OSError:
            raise StaleRegistry(f"{path}, imported by the plugins, is gone") from None
        if (st.st_size, st.st_mtime_ns) != (size, mtime):
            raise StaleRegistry(f"{path}, imported by the plugins, changed")


def write_cache(path: Path, data: Mapping[str, Any]) -> None:
    from bench_harness.atomic import atomic_write

    text = json.dumps(data, sort_keys=True, indent=None, allow_nan=False)

    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(path, write)
    try:  # the user's own (a group-writable umask would otherwise make it a file the reader refuses)
        os.chmod(path, 0o600)
    except OSError:
        pass


def _read_text(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise StaleRegistry(f"no cache at {path}") from None
    except OSError as exc:
        raise StaleRegistry(f"{path} cannot be opened: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StaleRegistry(f"{path} is not a regular file")
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise StaleRegistry(f"{path} belongs to another user")
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise StaleRegistry(f"{path} is writable by others")
        if st.st_size > _MAX_BYTES:
            raise StaleRegistry(f"{path} is larger than {_MAX_BYTES} bytes")
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        raw = fh.read(_MAX_BYTES + 1)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise StaleRegistry(f"{path} is not UTF-8 text") from None


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise StaleRegistry(f"damaged cache: {what}")


def _is_str(v: Any) -> bool:
    return type(v) is str


def _check_data(data: Any, key: str) -> None:
    """Raise StaleRegistry unless ``data`` is a well-formed cache of ``key`` (every field's type checked)."""
    _expect(type(data) is dict, "not a JSON object")
    _expect(data.get("format") == FORMAT, f"format {data.get('format')!r}, expected {FORMAT}")
    if data.get("key") != key:
        raise StaleRegistry("built for another set of installed plugins (a version, a file or a distribution "
                            "changed)")
    _expect(set(data) == {"format", "key", "installed", "plugins", "entries", "warnings", "watched"},
            "unexpected keys")
    _expect(type(data["watched"]) is list and all(
        type(w) is list and len(w) == 3 and _is_str(w[0]) and type(w[1]) is int and type(w[2]) is int
        for w in data["watched"]), "watched files")
    _expect(type(data["warnings"]) is list and all(map(_is_str, data["warnings"])), "warnings")
    plugins = data["plugins"]
    _expect(type(plugins) is list, "plugins")
    for p in plugins:
        _expect(type(p) is dict and set(p) == {"name", "distribution", "version", "module", "registers", "error"},
                "a plugin")
        _expect(all(_is_str(p[k]) for k in ("name", "distribution", "version", "module")), "a plugin's names")
        _expect(p["error"] is None or _is_str(p["error"]), "a plugin's error")
        _expect(type(p["registers"]) is dict and all(k in KINDS and type(v) is list and all(map(_is_str, v))
                                                      for k, v in p["registers"].items()), "a plugin's names")
    entries = data["entries"]
    _expect(type(entries) is dict and set(entries) == set(KINDS), "entries")
    for kind, table in entries.items():
        _expect(type(table) is dict, f"{kind} entries")
        for name, e in table.items():
            _expect(_is_str(name) and type(e) is dict, f"{kind} {name!r}")
            want = {"plugin", "distribution", "version", "prefix"} | (
                {"meta"} if kind == "pruner" else {"shape"} if kind == "dataset" else set())
            _expect(set(e) == want, f"{kind} {name!r}: keys")
            _expect(all(_is_str(e[k]) for k in ("plugin", "distribution", "version")) and type(e["prefix"]) is bool,
                    f"{kind} {name!r}")
            if kind == "pruner":
                _check_pruner(name, e["meta"])
            if kind == "dataset":
                shape = e["shape"]
                _expect(shape is None or (type(shape) is list and len(shape) == 3
                                          and all(type(v) is int and v > 0 for v in shape)), f"dataset {name!r}: shape")


def _check_pruner(name: str, m: Any) -> None:
    keys = {"version", "description", "regime", "sparsity_kind", "granularity", "requires", "ignores_sparsity",
            "has_scores", "test_only", "params", "param_help", "has_stages"}
    _expect(type(m) is dict and set(m) == keys, f"pruner {name!r}: keys")
    _expect(all(_is_str(m[k]) for k in ("version", "description", "regime", "sparsity_kind", "granularity")),
            f"pruner {name!r}")
    _expect(type(m["requires"]) is dict and set(m["requires"]) == {"data", "labels", "pretrained"}
            and all(type(v) is bool for v in m["requires"].values()), f"pruner {name!r}: requires")
    _expect(type(m["ignores_sparsity"]) is bool and type(m["has_scores"]) is bool and type(m["test_only"]) is bool
            and type(m["has_stages"]) is bool, f"pruner {name!r}")
    _expect(type(m["param_help"]) is dict and all(type(v) is list and len(v) == 2 and all(map(_is_str, v))
                                                  for v in m["param_help"].values()), f"pruner {name!r}: help")
    if m["params"] is not None:
        try:
            params_class(m["params"])
        except Exception as exc:  # noqa: BLE001 - any malformed declaration: the cache is not used
            raise StaleRegistry(f"damaged cache: pruner {name!r}: parameters ({type(exc).__name__}: {exc})") from None


def read_cache(path: Path, key: str) -> dict[str, Any]:
    """The validated cache of the installed set ``key``; StaleRegistry saying why not."""
    text = _read_text(path)
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise StaleRegistry(f"damaged cache: not JSON ({exc})") from None
    _check_data(data, key)
    check_watched(data)
    return data


# -- the registry read from the cache ------------------------------------------------------------------------------
@dataclass
class PluginMeta:
    name: str
    distribution: str
    version: str
    module: str
    registers: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None


@dataclass
class EntryMeta:
    name: str
    obj: Any
    plugin: str
    distribution: str
    version: str


class PrunerMeta:
    """What validation and `bench plugins` read of a pruner class, from the cache: ``name``, ``version``,
    ``description``, ``regime``/``sparsity_kind``/``granularity`` (``.value``), ``requires``, ``ignores_sparsity``,
    ``has_scores``, ``Params`` (rebuilt), :meth:`make_params` and :meth:`param_help`."""

    def __init__(self, name: str, meta: Mapping[str, Any], importer: Callable[[], Any]) -> None:
        self.name = name
        self.version = meta["version"]
        self.description = meta["description"]
        self.regime = SimpleNamespace(value=meta["regime"])
        self.sparsity_kind = SimpleNamespace(value=meta["sparsity_kind"])
        self.granularity = SimpleNamespace(value=meta["granularity"])
        self.requires = SimpleNamespace(**meta["requires"])
        self.ignores_sparsity = meta["ignores_sparsity"]
        self.has_scores = meta["has_scores"]
        self.test_only = meta["test_only"]
        self.has_stages = meta["has_stages"]
        self.prefix = False
        self._help = {k: (_Repr(v[0]), v[1]) for k, v in meta["param_help"].items()}
        self._params = meta["params"]
        self._params_cls: type | None = None
        self._importer = importer

    @property
    def lazy_params(self) -> bool:
        """Whether the parameters are validated from the cache (else by importing the pruner)."""
        return self._params is not None

    @property
    def Params(self) -> type:  # noqa: N802 - the attribute of a pruner class
        if self._params is None:
            return self._importer().get("pruner", self.name).Params
        if self._params_cls is None:
            self._params_cls = params_class(self._params)
        return self._params_cls

    def make_params(self, values: Mapping[str, Any] | None) -> Any:
        if self._params is None:  # a declaration the cache cannot hold: the pruner itself validates
            return self._importer().get("pruner", self.name).make_params(values)
        params = validate_params(self.name, self.Params, values)
        if self.has_scores:  # what ScorePruner.make_params adds: its allocation fields checked together
            from bench_harness.contract.allocation import check_params

            check_params(self.name, params)
        return params

    def param_help(self) -> dict[str, tuple[str, str]]:
        """name -> (default as repr text, help text)."""
        return dict(self._help)

    def stages(self, params: Any, run: Any) -> list[Any]:
        """The pruner's stage artifacts (``Pruner.stages``): none without importing it when the cache says its
        class does not declare any; else the pruner is imported and asked, with its own ``Params``."""
        if not self.has_stages:
            return []
        real = self._importer().get("pruner", self.name)
        return real.stages(real_params(real, params), run)


def real_params(pruner_cls: Any, params: Any) -> Any:
    """``params`` as an instance of the pruner's own ``Params``: parameters rebuilt from the cache (see
    :func:`~bench_harness.contract.params.params_class`) are validated again by the pruner; others are returned
    as they are."""
    from bench_harness.contract.params import field_values, is_rebuilt

    return pruner_cls.make_params(field_values(params)) if is_rebuilt(params) else params


class _Repr(str):
    """A default shown by `bench plugins -v` (``{default!r}`` prints the cached repr as it was)."""

    def __repr__(self) -> str:
        return str(self)


class LightRegistry:
    """The registry's lookups (``entry``, ``get``, ``names``, ``plugins``) over the cached metadata."""

    lazy = True

    def __init__(self, data: Mapping[str, Any], importer: Callable[[], Any]) -> None:
        self.warned = list(data["warnings"])
        self.plugins = {p["name"]: PluginMeta(**p) for p in data["plugins"]}
        self.entries: dict[str, dict[str, EntryMeta]] = {}
        for kind in KINDS:
            table = self.entries[kind] = {}
            for name, e in data["entries"][kind].items():
                obj = PrunerMeta(name, e["meta"], importer) if kind == "pruner" else SimpleNamespace(
                    name=name, prefix=e["prefix"], **({"shape": e["shape"]} if kind == "dataset" else {}))
                table[name] = EntryMeta(name, obj, e["plugin"], e["distribution"], e["version"])

    def entry(self, kind: str, name: str) -> EntryMeta:
        from bench_harness.contract.plugins import find_entry  # pluggy only: no plugin, no torch

        return find_entry(self.entries[kind], kind, name)

    def get(self, kind: str, name: str) -> Any:
        return self.entry(kind, name).obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.entries[kind])


def _warn_again(reg: LightRegistry) -> None:
    """The warnings importing the plugins gave (a plugin that failed to load), kept in the cache."""
    from bench_harness.contract.plugins import PluginWarning

    for message in reg.warned:
        warnings.warn(message, PluginWarning, stacklevel=3)


def light_registry(note: Callable[[str], None] | None = None) -> Any:
    """The plugin registry for lookups and validation: read from the cache when it is valid for the installed
    plugins (nothing imported), else the plugins imported as before (:func:`~bench_harness.contract.plugins.
    get_registry`) and the cache rebuilt. ``note`` receives a sentence on why the cache was not used."""
    from bench_harness.contract import plugins
    from bench_harness.contract.plugins import get_registry

    process = plugins._REGISTRY
    if process is not None and any(i.distribution == "(in-process)" for i in process.plugins.values()):
        return process  # plugins registered in this process (an embedding program): no cache knows them
    say = note or (lambda _msg: None)
    path = cache_path()
    if path is None:
        say(f"plugin registry cache disabled ({CACHE_ENV}=off): importing the plugins")
        return get_registry()
    try:
        installed = installed_set()
    except StaleRegistry as exc:
        say(f"plugin registry cache not used: {exc}; importing the plugins")
        return get_registry()
    key = set_key(installed)
    try:
        reg = LightRegistry(read_cache(path, key), get_registry)
    except StaleRegistry as exc:
        say(f"plugin registry cache not used ({exc}): importing the plugins and rebuilding it at {path}")
        return rebuild(path, installed)
    _warn_again(reg)
    return reg


def rebuild(path: Path, installed: Mapping[str, Any]) -> Any:
    """Import the plugins (but those that declare their metadata statically), write the cache for ``installed``
    and return the registry: the loaded one, or the cache's when some plugins were not imported."""
    from bench_harness.contract import plugins

    static, static_warned = static_declarations()
    with warnings.catch_warnings(record=True) as caught:  # kept in the cache, and given here as usual
        warnings.simplefilter("always", plugins.PluginWarning)
        before = set(sys.modules)
        registry = plugins.Registry(skip=frozenset(static))
        watched = watched_files(before)
    warned = static_warned + [str(w.message) for w in caught if issubclass(w.category, plugins.PluginWarning)]
    for message in static_warned:
        warnings.warn(message, plugins.PluginWarning, stacklevel=3)
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if not static and plugins._REGISTRY is None:  # the process-wide registry (get_registry) is this one
        plugins._REGISTRY = registry
    data = registry_data(registry, installed, warned, static)
    data["watched"] = watched
    try:
        write_cache(path, data)
    except (OSError, ValueError) as exc:  # read-only cache folder, a value JSON cannot hold: import next time too
        warnings.warn(f"the plugin registry cache could not be written to {path}: {exc}", UserWarning,
                      stacklevel=2)
    return LightRegistry(data, plugins.get_registry) if static else registry
