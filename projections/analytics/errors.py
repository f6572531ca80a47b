"""The one error analysis queries raise for a bad question (the API turns it into a 400)."""

from __future__ import annotations


class QueryProblem(ValueError):
    """A question that cannot be answered as asked; names the field and the rule."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
