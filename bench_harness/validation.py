"""Errors of a pydantic validation as (key, message) pairs a user can act on: the key, the allowed values, a
did-you-mean. Shared by the suite sections (configuration) and the pruners' ``Params`` (contract)."""
from __future__ import annotations

from pydantic import ValidationError

from bench_harness.errors import did_you_mean


def validation_problems(exc: ValidationError, fields: list[str]) -> list[tuple[str, str]]:
    """(key, message) for every error of a pydantic validation, with allowed values and did-you-mean."""
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        kind = err["type"]
        if kind in ("unexpected_keyword_argument", "extra_forbidden"):
            key = str(err["loc"][-1])
            out.append((loc, f"unknown setting.{did_you_mean(key, fields)} Known settings: {', '.join(fields)}."))
        elif kind == "literal_error":
            out.append((loc, f"{err['input']!r} is not allowed: use {err['ctx']['expected']}"
                             f".{did_you_mean(str(err['input']), _literal_choices(err['ctx']['expected']))}"))
        elif kind == "value_error" and "error" in err.get("ctx", {}):
            # the dataclass's own sentence (__post_init__, a validator), not pydantic's "Value error, ..." with the
            # whole section as the input
            out.append((loc, str(err["ctx"]["error"])))
        else:
            out.append((loc, f"{err['msg'].rstrip('.')} (got {err.get('input')!r})"))
    return out


def _literal_choices(expected: str) -> list[str]:
    return [c.strip().strip("'") for c in expected.replace(" or ", ",").split(",") if c.strip()]
