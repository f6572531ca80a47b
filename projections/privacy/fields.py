"""Which fields of an event are personal: sealed at the gateway, opened for allowed readers.

The default list is what storefronts send about people (Segment's reserved
traits that identify someone); the setting ``personal_fields`` (comma-separated)
replaces it. A listed key is personal wherever it sits at the top of an event's
``properties`` (an identify call's traits are its properties) or of
``context.traits``. Nested values (``products[].name``) are product data, not
personal, and stay as sent.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PERSONAL_FIELDS = (
    "email",
    "phone",
    "name",
    "first_name",
    "last_name",
    "address",
    "birthday",
)
# Sealed values of these fields also carry a keyed hash, for "find by e-mail".
LOOKUP_FIELDS = frozenset({"email", "phone"})


@dataclass(frozen=True, slots=True)
class PersonalFields:
    """The personal keys, and which of them carry a keyed hash for lookups."""

    names: frozenset[str]
    lookups: frozenset[str] = LOOKUP_FIELDS

    @classmethod
    def from_setting(cls, value: str) -> PersonalFields:
        """The list of the ``personal_fields`` setting; the default when empty."""
        listed = [name.strip() for name in value.split(",") if name.strip()]
        return cls(frozenset(listed or DEFAULT_PERSONAL_FIELDS))

    def __contains__(self, name: object) -> bool:
        return name in self.names
