"""Client request bodies as the adapters read them: parsed once, and the parts an adapter relies
on checked against the shape it expects, so a body of another shape is the client's 400 saying
what is wrong rather than keyswap's crash.
"""

from __future__ import annotations

import json
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ClientError

# Bodies keyswap reads are parsed in memory; larger ones are refused.
MAX_ADAPTED_BODY = 32 << 20


def parse_json(body: bytes) -> Any:
    """The body's JSON value; ClientError when it is too large, not JSON or nested deeper than
    the parser goes (json raises RecursionError there, not ValueError)."""
    _check_size(body)
    try:
        return json.loads(body)
    except RecursionError:
        raise ClientError(400, "the request body is nested too deeply") from None
    except ValueError:
        raise ClientError(400, "the request body is not valid JSON") from None


def _check_size(body: bytes) -> None:
    if len(body) > MAX_ADAPTED_BODY:
        raise ClientError(413, f"the request body is over {MAX_ADAPTED_BODY >> 20} MiB")


def dump_json(data: Any) -> bytes:
    """`data` as compact JSON; what parse_json took in, dump_json can put out, but a deep body
    may meet a deeper stack here, so that too is the client's 400."""
    try:
        return json.dumps(data, separators=(",", ":")).encode()
    except RecursionError:
        raise ClientError(400, "the request body is nested too deeply") from None


class BodyShape(BaseModel):
    """The fields of a body an adapter reads, typed as strictly as JSON is (no coercion: a
    "true" is not true). Other fields are allowed and not looked at: a shape checks a body,
    and the adapter forwards the body itself, so nothing is lost. (Ignoring them rather than
    keeping them in the model halves the cost of checking a long conversation.)"""

    model_config = ConfigDict(extra="ignore", strict=True, frozen=True)

    # Every field name and alias of every shape: what an error location may name.
    _fields: ClassVar[set[str]] = set()

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        for name, info in cls.model_fields.items():
            BodyShape._fields.update(n for n in (name, info.alias) if n)

    @classmethod
    def of(cls, data: Any) -> Self:
        """Parsed JSON checked against this shape; ClientError(400) naming what is wrong."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ClientError(400, _describe(exc)) from None

    @classmethod
    def parse(cls, body: bytes) -> Self:
        """A body parsed and checked in one pass that builds only the fields read, for an
        adapter that reads a body without rewriting it (cheaper than json.loads alone).
        This parser stops at 200 levels of nesting, which no API request comes near."""
        _check_size(body)
        try:
            return cls.model_validate_json(body or b"{}")
        except ValidationError as exc:
            raise ClientError(400, _describe(exc)) from None


_WANTS = {
    "list_type": "a list",
    "string_type": "a string",
    "bool_type": "true or false",
    "model_type": "an object",
    "dict_type": "an object",
    "int_type": "an integer",
}


def _describe(exc: ValidationError) -> str:
    """The most specific problem, e.g. `messages.0.type must be a string`. Pydantic also puts
    the member of a union it tried into the location (`str`, `list[Part]`); those go, and the
    members' wishes are joined: `content must be a string or a list`."""
    found: dict[str, list[str]] = {}
    for error in exc.errors(include_url=False):
        if error["type"] == "json_invalid":
            why = error["msg"].removeprefix("Invalid JSON: ")
            if why.startswith("recursion limit"):
                return "the request body is nested too deeply"
            return f"the request body is not valid JSON ({why})"
        loc = [str(p) for p in error["loc"] if isinstance(p, int) or p in BodyShape._fields]
        want = _WANTS.get(error["type"], f"valid ({error['msg']})")
        found.setdefault(".".join(loc), []).append(want)
    where = max(found, key=lambda w: w.count(".") + bool(w))
    wants = " or ".join(dict.fromkeys(found[where]))
    if not where:
        return f"the request body must be {'a JSON object' if wants == 'an object' else wants}"
    return f"the request body's {where} must be {wants}"
