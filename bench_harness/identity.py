"""Run identity: a stable hash of a run's canonical configuration.

Fields equal to their default are left out before hashing (as OpenLTH does), so adding a new field with a
default changes no existing run id. Known hashes are frozen in tests/test_identity.py.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any


def _canonical(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return non_default_fields(value)
    if isinstance(value, dict):
        return {str(k): _canonical(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, float):
        # 0.1 and 0.1000000001 from YAML/float math must not give two ids; 12 significant digits.
        return float(f"{value:.12g}")
    if hasattr(value, "value") and isinstance(getattr(value, "value"), (str, int)):  # enums
        return value.value
    return value


def non_default_fields(obj: Any) -> dict[str, Any]:
    """The fields of a dataclass instance that differ from their defaults, canonicalised."""
    out = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or _canonical(value) != _canonical(default):
            out[f.name] = _canonical(value)
    return out


def canonical_json(config: dict[str, Any]) -> str:
    return json.dumps(_canonical(config), sort_keys=True, separators=(",", ":"))


def config_hash(config: dict[str, Any], length: int = 16) -> str:
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:length]
