"""Explicit nulls on optional fields read as "not given".

YAML writers and msModelSlim's own configs spell an unset option ``key: null`` (or ``key:``); the
API server prunes such nulls from a QuantJob before admission (map values too). Reading them as
absent gives the field its default everywhere, so ``quantjob validate`` and the webhook agree. A
null on a required field is kept, and is reported as the wrong type.
"""

from __future__ import annotations

from typing import Any, get_origin

from pydantic import BaseModel, model_validator


def without_nulls(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys of ``model``'s optional fields whose value is None, and without the
    null values of its map fields (``env``, ``resources.requests``)."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    out: dict[Any, Any] = {}
    for key, value in data.items():
        field = fields.get(key) if isinstance(key, str) else None
        if field is None:
            out[key] = value
        elif value is None and not field.is_required():
            continue
        elif isinstance(value, dict) and get_origin(field.annotation) is dict:
            out[key] = {name: item for name, item in value.items() if item is not None}
        else:
            out[key] = value
    return out


class NullsAsDefaults(BaseModel):
    """Base for the contract's models: an explicit null on an optional field gives its default."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_as_defaults(cls, data: Any) -> Any:
        return without_nulls(cls, data)
