"""What every API input goes through: text that a database can store (``core.text``), integers a
64-bit column can hold. ``InputSchema`` is the base of every request body schema (a test checks
that none is missing it): each str field, also inside lists and nested schemas, is one line without
control characters unless the schema names it in ``multiline_fields``; each int fits 64 bits.
``QueryText`` is the same for a plain str query parameter. Refused text is a 400 naming the field
(``{"detail": "to[0]: NUL characters are not allowed", "field": "to[0]"}``); an int out of range a 422."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from ninja import Schema
from pydantic import AfterValidator, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from mailroom.api.params import MAX_DB_ID
from mailroom.core.text import text_problem

STORABLE_TEXT = "storable_text"  # the error type: api.main answers it with a 400 naming the field


def _checked(value: Any, *, multiline: bool, path: str = "") -> Any:
    """``value`` if its text is storable; ``path`` (``[0]``, ``.key``) says where inside a list or dict."""
    if isinstance(value, str):
        problem = text_problem(value, multiline=multiline)
        if problem is not None:
            raise PydanticCustomError(STORABLE_TEXT, problem, {"path": path})
    elif isinstance(value, bool):
        pass
    elif isinstance(value, int):
        if not -MAX_DB_ID - 1 <= value <= MAX_DB_ID:
            raise PydanticCustomError("int_range", "must be between {lo} and {hi}", {"lo": -MAX_DB_ID - 1, "hi": MAX_DB_ID})
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            _checked(item, multiline=multiline, path=f"{path}[{i}]")
    elif isinstance(value, set | frozenset):
        for item in value:
            _checked(item, multiline=multiline, path=path)
    elif isinstance(value, dict):
        for key, item in value.items():
            _checked(key, multiline=False, path=path)
            _checked(item, multiline=multiline, path=f"{path}.{key}")
    return value


class InputSchema(Schema):
    """Base of request body schemas: see the module docstring."""

    multiline_fields: ClassVar[frozenset[str]] = frozenset()

    @field_validator("*", mode="after")
    @classmethod
    def _storable(cls, value: Any, info: ValidationInfo) -> Any:
        return _checked(value, multiline=info.field_name in cls.multiline_fields)


def _line(value: str) -> str:
    return _checked(value, multiline=False)  # type: ignore[no-any-return]


QueryText = Annotated[str, AfterValidator(_line)]
