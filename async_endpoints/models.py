"""Conversions between JSON and handlers' request and result types."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from async_endpoints.errors import ResultError, ValidationError
from async_endpoints.jobs import JSONValue


def to_json(value: Any, *, max_bytes: int | None = None) -> JSONValue:
    """Turn a handler's result (or a request model) into plain JSON data.

    Dataclasses and pydantic models are converted; anything else must already be
    JSON-serialisable.

    :param max_bytes: the largest encoded size accepted.
    :raises ResultError: the value is not JSON-serialisable or too large.
    """
    if hasattr(value, "model_dump") and callable(value.model_dump):
        value = value.model_dump(mode="json")
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        value = dataclasses.asdict(value)
    try:
        encoded = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise ResultError(
            f"The handler returned a value that is not JSON-serialisable: {exc}. "
            "Return a dict, list, str, number, bool, None, a dataclass or a "
            "pydantic model."
        ) from exc
    if max_bytes is not None and len(encoded) > max_bytes:
        raise ResultError(
            f"The handler's result is {len(encoded)} bytes of JSON, more than "
            f"ASYNC_ENDPOINTS_MAX_RESULT_BYTES ({max_bytes}); store large results "
            "elsewhere and return a reference to them."
        )
    decoded: JSONValue = json.loads(encoded)
    return decoded


def parse_model(model: type[Any], data: JSONValue) -> Any:
    """Build an instance of ``model`` (a dataclass or pydantic model) from JSON.

    :raises ValidationError: the data does not fit, with one entry per problem.
    """
    if hasattr(model, "model_validate"):
        import pydantic

        try:
            return model.model_validate(data)
        except pydantic.ValidationError as exc:
            errors = [
                {"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]}
                for e in exc.errors(include_url=False, include_context=False)
            ]
            raise ValidationError(
                "The request body is invalid.", errors=errors
            ) from None
    if dataclasses.is_dataclass(model):
        return _parse_dataclass(model, data)
    raise TypeError(
        f"request_model {model!r} is neither a dataclass nor a pydantic model"
    )


_SIMPLE: dict[str, type | tuple[type, ...]] = {
    "str": str,
    "int": int,
    "float": (int, float),
    "bool": bool,
}


def _parse_dataclass(model: type[Any], data: JSONValue) -> Any:
    if not isinstance(data, dict):
        raise ValidationError(
            "The request body is invalid.",
            errors=[{"loc": [], "msg": "Expected a JSON object", "type": "type_error"}],
        )
    fields = {f.name: f for f in dataclasses.fields(model) if f.init}
    errors: list[dict[str, Any]] = [
        {"loc": [name], "msg": "Unknown field", "type": "extra_forbidden"}
        for name in data
        if name not in fields
    ]
    for name, f in fields.items():
        required = (
            f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if name not in data:
            if required:
                errors.append(
                    {"loc": [name], "msg": "Field required", "type": "missing"}
                )
            continue
        type_name = (
            f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        )
        expected = _SIMPLE.get(type_name)
        value = data[name]
        if expected is not None and (
            not isinstance(value, expected)
            or (isinstance(value, bool) and expected is not bool)
        ):
            errors.append(
                {"loc": [name], "msg": f"Expected {f.type}", "type": "type_error"}
            )
    if errors:
        raise ValidationError("The request body is invalid.", errors=errors)
    return model(**data)
