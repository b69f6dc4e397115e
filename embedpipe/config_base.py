"""Base class for every recipe section: unknown keys and bad values are errors that name the field."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A strict, typed recipe section (``extra="forbid"``: a misspelt key is an error, not silently ignored)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())
