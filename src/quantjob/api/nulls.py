"""Explicit nulls on optional fields read as "not given".

YAML writers and msModelSlim's own configs spell an unset option ``key: null`` (or ``key:``); the
API server prunes such nulls from a QuantJob before admission. Reading them as absent gives the
field its default everywhere, so ``quantjob validate`` and the webhook agree. A null on a
required field is kept, and is reported as the wrong type.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, model_validator


def without_nulls(model: type[BaseModel], data: Any) -> Any:
    """``data`` without the keys of ``model``'s optional fields whose value is None."""
    if not isinstance(data, dict):
        return data
    fields = model.model_fields
    return {key: value for key, value in data.items()
            if not (value is None and key in fields and not fields[key].is_required())}


class NullsAsDefaults(BaseModel):
    """Base for the contract's models: an explicit null on an optional field gives its default."""

    @model_validator(mode="before")
    @classmethod
    def _nulls_as_defaults(cls, data: Any) -> Any:
        return without_nulls(cls, data)
