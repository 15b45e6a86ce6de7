"""What can be wrong with a definition or a request; the edge maps these to gRPC statuses (`grpc_api.py`)."""

from __future__ import annotations


class DefinitionError(ValueError):
    """An audience or computed trait definition that cannot be accepted; `field` names where (e.g. `condition`)."""

    def __init__(self, message: str, field: str = "condition") -> None:
        super().__init__(message)
        self.field = field


class LanguageError(DefinitionError):
    """An expression the audience language cannot parse: where (1-based line and column) and what was expected."""

    def __init__(self, message: str, line: int, column: int, expected: tuple[str, ...] = ()) -> None:
        super().__init__(f"line {line}, column {column}: {message}", field="expression")
        self.line, self.column, self.expected = line, column, expected


class UnknownAudience(LookupError):
    """No audience has this id."""


class UnknownComputedTrait(LookupError):
    """No computed trait has this id."""
