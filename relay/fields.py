"""Checks of request fields shared by the API areas: each failure is a 422 naming the field."""

from __future__ import annotations

from .errors import invalid_field
from .models import is_slug

SLUG_RULE = "must be a slug: 1-64 of a-z, 0-9, '-', '_', starting with a letter or digit"


def text_field(body: dict, name: str, required: bool = True, limit: int = 200) -> str | None:
    """A non-empty string of at most `limit` characters, stripped; None when absent and optional."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip() or len(value) > limit:
        raise invalid_field(name, f"must be a non-empty string of at most {limit} characters")
    return value.strip()


def slug_field(body: dict, name: str, required: bool) -> str | None:
    """An id: a slug; None when absent and optional."""
    value = body.get(name)
    if value is None and not required:
        return None
    if not is_slug(value):
        raise invalid_field(name, SLUG_RULE)
    return value
