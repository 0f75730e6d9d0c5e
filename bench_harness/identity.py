"""Run identity: a stable hash of a run's canonical configuration.

Fields equal to their default are left out before hashing (as OpenLTH does), so adding a new field with a
default changes no existing run id. Known hashes are frozen in tests/test_identity.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any

_PLAIN = (str, int, bool, type(None))


def _canonical(value: Any) -> Any:
    if type(value) in _PLAIN:  # the common case first: suites expand to 10^5-10^6 runs, each hashed
        return value
    if isinstance(value, float):
        # 0.1 and 0.1000000001 from YAML/float math must not give two ids; 12 significant digits.
        return float(f"{value:.12g}")
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return non_default_fields(value)
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):  # enums
        return value.value
    return value


_MISSING = dataclasses.MISSING
_DEFAULTS: dict[type, tuple[tuple[str, Any], ...]] = {}


def _canonical_defaults(cls: type) -> tuple[tuple[str, Any], ...]:
    """(field name, canonical default or MISSING) of a dataclass type, computed once per type."""
    cached = _DEFAULTS.get(cls)
    if cached is None:
        out = []
        for f in dataclasses.fields(cls):
            if f.default is not _MISSING:
                out.append((f.name, _canonical(f.default)))
            elif f.default_factory is not _MISSING:
                out.append((f.name, _canonical(f.default_factory())))
            else:
                out.append((f.name, _MISSING))
        cached = _DEFAULTS[cls] = tuple(out)
    return cached


_FROZEN_CACHE: dict[int, tuple[Any, dict[str, Any]]] = {}  # id -> (the instance, kept alive; its fields)


def non_default_fields(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from their defaults, canonicalised. Results for frozen
    instances (a suite's recipe, scoring and prunable set, shared by all its runs) are cached per instance (not
    by value: 1 and 1.0 are equal but canonicalise differently)."""
    params = getattr(type(obj), "__dataclass_params__", None)
    if params is None or not params.frozen:
        return _non_default_fields(obj)
    try:
        hash(obj)  # frozen and hashable: nothing inside can change
    except TypeError:  # a dict or list inside could be modified in place: not cached
        return _non_default_fields(obj)
    entry = _FROZEN_CACHE.get(id(obj))
    if entry is None or entry[0] is not obj:
        if len(_FROZEN_CACHE) > 10_000:
            _FROZEN_CACHE.clear()
        entry = _FROZEN_CACHE[id(obj)] = (obj, _non_default_fields(obj))
    return dict(entry[1])


def _non_default_fields(obj: Any) -> dict[str, Any]:
    out = {}
    for name, default in _canonical_defaults(type(obj)):
        value = _canonical(getattr(obj, name))
        if default is _MISSING or value != default:
            out[name] = value
    return out


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]
