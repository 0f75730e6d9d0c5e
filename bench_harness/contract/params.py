"""A pruner's hyperparameters as data: validation of a ``Params`` dataclass, and its declaration written down as
JSON (types, defaults, bounds, help) and rebuilt, so that a suite's parameters can be validated from the plugin
registry's cache without importing the plugin (see :mod:`bench_harness.contract.registry`).

Only what can be rebuilt exactly is written down: plain types (int, float, bool, str, None, Any), ``Literal``,
unions, ``list``/``tuple``/``dict`` of those, ``Annotated`` with ``Strict``, ``Field`` bounds and lengths, and
JSON-representable defaults. A ``Params`` with anything else (an enum, a nested dataclass, a ``__post_init__``,
a validator) is described as ``None``: its pruner is validated by importing it, never loosely. Nothing here
imports torch.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import types
import typing
from typing import Any, Mapping

from typing_extensions import Annotated, Literal, get_args, get_origin

_ADAPTERS: dict[type, Any] = {}


def params_adapter(params_cls: type) -> Any:
    from pydantic import TypeAdapter

    if params_cls not in _ADAPTERS:
        _ADAPTERS[params_cls] = TypeAdapter(params_cls)
    return _ADAPTERS[params_cls]


def validate_params(pruner: str, params_cls: type, values: Mapping[str, Any] | None) -> Any:
    """``params_cls`` built from a mapping, validated by pydantic against its annotations (types, ``Literal``
    allowed values, ``Annotated`` ranges); a bad key or value raises ``ValueError`` naming the parameter and what
    is allowed. (``Pruner.make_params`` and the registry's rebuilt classes both validate here.)"""
    from pydantic import ValidationError

    from bench_harness.errors import did_you_mean

    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(params_cls)]
    unknown = sorted(set(values) - set(known))
    if unknown:
        hint = f"known parameters: {', '.join(sorted(known))}" if known else "it takes no parameters"
        suggestion = did_you_mean(unknown[0], known)
        raise ValueError(f"pruner {pruner!r} has no parameter {', '.join(map(repr, unknown))}.{suggestion} "
                         f"({hint})")
    try:
        return params_adapter(params_cls).validate_python(values)
    except ValidationError as exc:
        from bench_harness.validation import validation_problems

        problems = [f"parameter {key!r}: {message}" for key, message in validation_problems(exc, known)]
        raise ValueError(f"pruner {pruner!r} " + "; ".join(problems)) from None  # every one of them
    except Exception as exc:  # annotations pydantic cannot interpret: build without validation
        if "pydantic" not in type(exc).__module__:
            raise
        return params_cls(**values)


def param(default: Any, help: str, **kw: Any) -> Any:
    """A dataclass field with help text: ``rounds: int = param(100, "number of pruning rounds")``."""
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata={"help": help}, **kw)
    return dataclasses.field(default=default, metadata={"help": help}, **kw)


class Unsupported(Exception):
    """A declaration that cannot be written down exactly."""


# -- values: JSON with tuples tagged, checked to come back equal and of the same types -------------------------
def encode_value(value: Any) -> Any:
    if value is None or type(value) in (bool, int, str):
        return value
    if type(value) is float:
        if not math.isfinite(value):
            raise Unsupported(f"default {value!r}")
        return value
    if type(value) is list:
        return [encode_value(v) for v in value]
    if type(value) is tuple:
        return {"tuple": [encode_value(v) for v in value]}
    if type(value) is dict and all(type(k) is str for k in value):
        return {"dict": {k: encode_value(v) for k, v in value.items()}}
    raise Unsupported(f"default of type {type(value).__name__}")


def decode_value(data: Any) -> Any:
    if data is None or type(data) in (bool, int, float, str):
        return data
    if type(data) is list:
        return [decode_value(v) for v in data]
    if type(data) is dict and set(data) == {"tuple"} and type(data["tuple"]) is list:
        return tuple(decode_value(v) for v in data["tuple"])
    if type(data) is dict and set(data) == {"dict"} and type(data["dict"]) is dict:
        return {str(k): decode_value(v) for k, v in data["dict"].items()}
    raise ValueError(f"not an encoded value: {data!r}")


# -- types -----------------------------------------------------------------------------------------------------
_PLAIN = {"int": int, "float": float, "bool": bool, "str": str}


def _constraints() -> dict[str, type]:
    import annotated_types as at
    from pydantic import Strict

    return {"ge": at.Ge, "gt": at.Gt, "le": at.Le, "lt": at.Lt, "multiple_of": at.MultipleOf,
            "min_length": at.MinLen, "max_length": at.MaxLen, "strict": Strict}


def _metadata(meta: Any) -> list[dict]:
    """Annotated metadata as [{"c": name, "v": value}], or Unsupported."""
    from pydantic.fields import FieldInfo

    kinds = _constraints()
    if isinstance(meta, FieldInfo):
        bare = FieldInfo()
        for slot in FieldInfo.__slots__:
            if slot in ("metadata", "_attributes_set", "_original_annotation", "_original_assignment",
                        "_qualifiers", "_complete", "_final", "annotation"):
                continue
            if getattr(meta, slot, None) != getattr(bare, slot, None):
                raise Unsupported(f"Field({slot}=...)")
        return [m for item in meta.metadata for m in _metadata(item)]
    for key, kind in kinds.items():
        if type(meta) is kind:
            value = getattr(meta, key)
            if type(value) not in (int, float, bool) or (type(value) is float and not math.isfinite(value)):
                raise Unsupported(f"constraint {meta!r}")
            return [{"c": key, "v": value}]
    raise Unsupported(f"annotation {meta!r}")


def encode_type(t: Any) -> dict:
    if t is Any:
        return {"t": "any"}
    if t is None or t is type(None):
        return {"t": "none"}
    for name, plain in _PLAIN.items():
        if t is plain:
            return {"t": name}
    origin, args = get_origin(t), get_args(t)
    if origin is Annotated:
        return {"t": "annotated", "of": encode_type(args[0]), "meta": [m for a in args[1:] for m in _metadata(a)]}
    if origin is Literal:
        if not all(v is None or type(v) in (bool, int, str) for v in args):
            raise Unsupported(f"{t!r}")
        return {"t": "literal", "values": list(args)}
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is getattr(types, "UnionType")):
        return {"t": "union", "of": [encode_type(a) for a in args]}
    if origin is list or t is list:
        return {"t": "list", "of": encode_type(args[0]) if args else {"t": "any"}}
    if origin is dict or t is dict:
        return {"t": "dict", "key": encode_type(args[0]) if args else {"t": "any"},
                "value": encode_type(args[1]) if args else {"t": "any"}}
    if origin is tuple or t is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return {"t": "tuple", "of": encode_type(args[0]) if args else {"t": "any"}}
        if args == ((),):
            return {"t": "fixed_tuple", "of": []}
        return {"t": "fixed_tuple", "of": [encode_type(a) for a in args]}
    raise Unsupported(f"type {t!r}")


def decode_type(data: Any) -> Any:
    if not isinstance(data, dict) or not isinstance(data.get("t"), str):
        raise ValueError(f"not an encoded type: {data!r}")
    t = data["t"]
    if t == "any":
        return Any
    if t == "none":
        return type(None)
    if t in _PLAIN:
        return _PLAIN[t]
    if t == "annotated":
        kinds = _constraints()
        metas = []
        for m in data["meta"]:
            kind = kinds[m["c"]]
            if type(m["v"]) not in (int, float, bool):
                raise ValueError(f"bad constraint {m!r}")
            metas.append(kind(m["v"]))
        base = decode_type(data["of"])
        return Annotated[(base, *metas)] if metas else base
    if t == "literal":
        values = data["values"]
        if not isinstance(values, list) or not values or not all(v is None or type(v) in (bool, int, str)
                                                                 for v in values):
            raise ValueError(f"bad literal {values!r}")
        return Literal[tuple(values)]
    if t == "union":
        return typing.Union[tuple(decode_type(a) for a in data["of"])]
    if t == "list":
        return list[decode_type(data["of"])]
    if t == "dict":
        return dict[decode_type(data["key"]), decode_type(data["value"])]
    if t == "tuple":
        return tuple[decode_type(data["of"]), ...]
    if t == "fixed_tuple":
        return tuple[tuple(decode_type(a) for a in data["of"])] if data["of"] else tuple[()]
    raise ValueError(f"unknown encoded type {t!r}")


# -- Params dataclasses ----------------------------------------------------------------------------------------
def describe_params(params_cls: type) -> dict | None:
    """The declaration of a ``Params`` dataclass as JSON data, or None when it cannot be rebuilt exactly (then
    its pruner is validated by importing it). Checked here: the rebuilt class has the same JSON Schema, the same
    defaults and validates the defaults to the same fields."""
    try:
        return _describe(params_cls)
    except Unsupported:
        return None


def _describe(params_cls: type) -> dict:
    if not dataclasses.is_dataclass(params_cls) or not isinstance(params_cls, type):
        raise Unsupported("not a dataclass")
    if hasattr(params_cls, "__post_init__") or hasattr(params_cls, "__pydantic_validator__") \
            or hasattr(params_cls, "__get_pydantic_core_schema__"):
        raise Unsupported("__post_init__ or validators")
    config = getattr(params_cls, "__pydantic_config__", None)
    if config is not None:
        if not isinstance(config, dict) or any(type(v) not in (str, bool, int, float) for v in config.values()):
            raise Unsupported("pydantic config")
        config = dict(config)
    try:
        hints = typing.get_type_hints(params_cls, include_extras=True)
    except Exception as exc:  # noqa: BLE001 - an annotation that does not resolve
        raise Unsupported(f"annotations: {exc}") from None
    fields = []
    for f in dataclasses.fields(params_cls):
        if not f.init or getattr(f, "kw_only", False) is True:
            raise Unsupported(f"field {f.name} (init=False or kw_only)")
        if f.default is not dataclasses.MISSING:
            default, factory = encode_value(f.default), False
        elif f.default_factory is not dataclasses.MISSING:
            default, factory = encode_value(f.default_factory()), True
        else:
            default, factory = None, None
        extra = set(f.metadata) - {"help"}
        if extra:
            raise Unsupported(f"field metadata {sorted(extra)}")
        fields.append({"name": f.name, "type": encode_type(hints[f.name]), "default": default,
                       "factory": factory, "help": str(f.metadata.get("help", ""))})
    desc = {"class": params_cls.__name__, "frozen": bool(params_cls.__dataclass_params__.frozen),
            "config": config, "fields": fields}
    _check(params_cls, params_class(desc))
    return desc


def _check(original: type, rebuilt: type) -> None:
    """The rebuilt class must be indistinguishable for validation and for run ids."""
    from bench_harness.identity import non_default_fields

    def schema(cls: type) -> Any:
        s = params_adapter(cls).json_schema()
        s.pop("title", None)
        s.pop("description", None)
        return s

    try:
        same = schema(original) == schema(rebuilt)
        defaults_same = (non_default_fields(params_adapter(original).validate_python({}))
                         == non_default_fields(params_adapter(rebuilt).validate_python({})))
    except Exception as exc:  # noqa: BLE001 - e.g. fields without defaults, schemas pydantic cannot build
        raise Unsupported(f"check: {type(exc).__name__}: {exc}") from None
    if not (same and defaults_same):
        raise Unsupported("rebuilt class differs")


REBUILT = "__bench_rebuilt_params__"  # the mark of a class made by params_class


def is_rebuilt(params: Any) -> bool:
    """Whether ``params`` is an instance of a class rebuilt from the registry's cache (not the pruner's own)."""
    return bool(getattr(type(params), REBUILT, False))


def field_values(params: Any) -> dict[str, Any]:
    """Every field of a ``Params`` instance, by name (what validating it again takes)."""
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def params_class(desc: Mapping[str, Any]) -> type:
    """A dataclass rebuilt from :func:`describe_params`'s data: same name, fields, types, defaults and help."""
    specs = []
    for f in desc["fields"]:
        kind = decode_type(f["type"])
        meta = {"help": f["help"]} if f.get("help") else {"help": ""}
        if f["factory"] is None:
            specs.append((f["name"], kind, dataclasses.field(metadata=meta)))
        elif f["factory"]:
            default = decode_value(f["default"])
            specs.append((f["name"], kind, dataclasses.field(default_factory=lambda d=default: copy.deepcopy(d),
                                                             metadata=meta)))
        else:
            specs.append((f["name"], kind, dataclasses.field(default=decode_value(f["default"]), metadata=meta)))
    namespace = {"__module__": __name__, "__doc__": "A pruner's Params rebuilt from the plugin registry's cache.",
                 REBUILT: True}
    if desc.get("config") is not None:
        from pydantic import ConfigDict

        namespace["__pydantic_config__"] = ConfigDict(**desc["config"])
    return dataclasses.make_dataclass(str(desc["class"]), specs, frozen=bool(desc["frozen"]), namespace=namespace)
