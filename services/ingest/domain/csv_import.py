"""CSV onboarding: a push parser that turns byte chunks into records with line numbers, and rows into identifies.

The parser holds at most one unfinished record and one partial line, whatever the file size: chunks may split
rows (or UTF-8 characters) anywhere. Records follow RFC 4180 (quoted fields may hold delimiters, doubled quotes
and line breaks); a UTF-8 byte-order mark is skipped; lines end in LF or CRLF. Line numbers are 1-based
physical lines, the header being line 1, and a multi-line record is numbered by its first line.
"""

from __future__ import annotations

import codecs
import csv
import enum
import hashlib
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cdp.errors import FieldViolation, InvalidInput
from services.ingest.domain.catalog import Attribute, BadValue

MAX_RECORD_CHARS = 64 * 1024
"""A record longer than this ends the import: almost always a quote that is never closed."""
MAX_BAD_ROWS = 1000
"""Bad rows reported in the response (the contract's cap); the count covers all of them."""
_IMPORT_IDS = uuid.UUID("0b6f1f9e-7a43-4c55-8d2a-5f3e2c1d9a77")
_QUOTE = '"'


@dataclass(frozen=True)
class Record:
    """One parsed record: its first line number and its fields."""

    line: int
    fields: list[str]


@dataclass(frozen=True)
class BadRow:
    """Why a row was rejected: its first line, the column to blame (if one) and a reason without values."""

    line: int
    reason: str
    column: str = ""


class CsvParser:
    """Feed byte chunks, get complete records (or bad rows) back; call `finish` after the last chunk."""

    def __init__(self, delimiter: str = ",") -> None:
        self._delimiter = delimiter
        self._decoder = codecs.getincrementaldecoder("utf-8-sig")(errors="replace")
        self._tail = ""  # text after the last line break seen
        self._pending: list[str] = []  # lines of a record still inside a quoted field
        self._pending_chars = 0
        self._in_quotes = False
        self._lines = 0  # physical lines consumed
        self.stopped = False
        """True once a runaway record ended the parse; later input is ignored."""

    def feed(self, chunk: bytes) -> list[Record | BadRow]:
        """Records completed by this chunk, in file order."""
        if self.stopped:
            return []
        lines = (self._tail + self._decoder.decode(chunk)).split("\n")
        self._tail = lines.pop()
        return self._records(line + "\n" for line in lines)

    def finish(self) -> list[Record | BadRow]:
        """The last record (a final line without a line break) and any record left open."""
        if self.stopped:
            return []
        last = self._tail + self._decoder.decode(b"", final=True)
        self._tail = ""
        out = self._records([last] if last else [])
        if self._pending:
            out.append(
                BadRow(self._lines - len(self._pending) + 1, "a quoted field is not closed at end of file")
            )
            self._pending = []
        return out

    def _records(self, lines: Iterator[str] | Sequence[str]) -> list[Record | BadRow]:
        complete: list[tuple[int, str]] = []
        for line in lines:
            self._lines += 1
            if not self._pending and _QUOTE not in line:
                complete.append((self._lines, line))  # the common case: no quotes, one line, one record
                continue
            self._pending.append(line)
            self._pending_chars += len(line)
            self._in_quotes = _ends_in_quotes(line, self._in_quotes, self._delimiter)
            if not self._in_quotes:
                complete.append((self._lines - len(self._pending) + 1, "".join(self._pending)))
                self._pending, self._pending_chars = [], 0
            elif self._pending_chars > MAX_RECORD_CHARS:
                first = self._lines - len(self._pending) + 1
                self.stopped, self._pending = True, []
                out = self._parse(complete)
                reason = f"the record is longer than {MAX_RECORD_CHARS} characters (a quote not closed?); import stopped"
                return [*out, BadRow(first, reason)]
        return self._parse(complete)

    def _parse(self, complete: list[tuple[int, str]]) -> list[Record | BadRow]:
        """Parse whole records with the csv module (fast, exact RFC 4180); skip blank lines."""
        out: list[Record | BadRow] = []
        for line, text in complete:
            if not text.strip("\r\n"):
                continue
            try:
                fields = next(csv.reader([text], delimiter=self._delimiter, strict=False))
            except csv.Error as error:
                out.append(BadRow(line, f"malformed CSV ({error})"))
                continue
            if any("\ufffd" in value for value in fields):
                out.append(BadRow(line, "is not valid UTF-8"))
                continue
            out.append(Record(line, fields))
        return out


def _ends_in_quotes(line: str, in_quotes: bool, delimiter: str) -> bool:
    """Whether a quoted field is still open at the end of this line (a quote opens one only at a field start)."""
    position = line.find(_QUOTE)
    while position != -1:
        if in_quotes:
            if line.startswith(_QUOTE * 2, position):
                position = line.find(_QUOTE, position + 2)
                continue
            in_quotes = False
        elif position == 0 or line[position - 1] == delimiter:
            in_quotes = True
        position = line.find(_QUOTE, position + 1)
    return in_quotes


class IdentifierKind(enum.Enum):
    """The kind of an identifier column (names match the contract's IdentifierType)."""

    USER_ID = "user_id"
    ANONYMOUS_ID = "anonymous_id"
    EMAIL = "email"
    PHONE = "phone"
    DEVICE_ID = "device_id"
    ADVERTISING_ID = "advertising_id"
    EXTERNAL = "external"


@dataclass(frozen=True)
class IdentifierColumn:
    """A column holding one kind of identifier; `namespace` names an EXTERNAL id's kind."""

    column: str
    kind: IdentifierKind
    namespace: str = ""


@dataclass(frozen=True)
class AttributeColumn:
    """A column holding a catalog attribute."""

    column: str
    attribute_id: str


@dataclass(frozen=True)
class ImportSpec:
    """How to read a file: which columns hold identifiers, attributes and the timestamp."""

    identifier_columns: tuple[IdentifierColumn, ...]
    attribute_columns: tuple[AttributeColumn, ...] = ()
    timestamp_column: str = ""
    delimiter: str = ","
    dry_run: bool = False


def validate_spec(spec: ImportSpec) -> None:
    """Raise `InvalidInput` for a header that cannot work whatever the file holds."""
    problems: list[FieldViolation] = []
    if len(spec.delimiter) != 1 or spec.delimiter in (_QUOTE, "\r", "\n"):
        problems.append(
            FieldViolation("header.delimiter", "must be one character, not a quote or line break")
        )
    if not spec.identifier_columns:
        problems.append(
            FieldViolation("header.identifier_columns", "at least one identifier column is required")
        )
    for index, column in enumerate(spec.identifier_columns):
        if column.kind is IdentifierKind.EXTERNAL and not column.namespace:
            problems.append(
                FieldViolation(f"header.identifier_columns[{index}].namespace", "is required for EXTERNAL")
            )
    if problems:
        raise InvalidInput(problems)


@dataclass
class RowMapper:
    """Turns records of one file into identify messages (Segment JSON), or says why a row is bad."""

    spec: ImportSpec
    width: int
    identifiers: list[tuple[int, IdentifierColumn]]
    attributes: list[tuple[int, str, Attribute]]
    timestamp: int | None
    _columns: list[str] = field(default_factory=list)

    @classmethod
    def for_header(cls, header: Record, spec: ImportSpec, catalog: Mapping[str, Attribute]) -> RowMapper:
        """Check the header line against the spec and the catalog; raise `InvalidInput` naming what is missing."""
        names = [name.strip() for name in header.fields]
        index_of = {name: i for i, name in reversed(list(enumerate(names)))}
        problems: list[FieldViolation] = []

        def column(name: str, path: str) -> int:
            if name not in index_of:
                problems.append(FieldViolation(path, "is not a column of the file's header line"))
                return -1
            if names.count(name) > 1:
                problems.append(FieldViolation(path, "names several columns of the header line"))
            return index_of[name]

        identifiers = [
            (column(c.column, f"header.identifier_columns[{i}].column"), c)
            for i, c in enumerate(spec.identifier_columns)
        ]
        attributes = []
        for i, c in enumerate(spec.attribute_columns):
            position = column(c.column, f"header.attribute_columns[{i}].column")
            attribute = catalog.get(c.attribute_id)
            if attribute is None:
                path = f"header.attribute_columns[{i}].attribute_id"
                problems.append(FieldViolation(path, "is not in the attribute catalog"))
                continue
            attributes.append((position, c.column, attribute))
        timestamp = (
            column(spec.timestamp_column, "header.timestamp_column") if spec.timestamp_column else None
        )
        if problems:
            raise InvalidInput(problems)
        return cls(spec, len(names), identifiers, attributes, timestamp, names)

    def to_message(self, record: Record) -> dict[str, Any] | BadRow:
        """The row's identify message, with a message id derived from its content (a re-import dedupes)."""
        cells = record.fields
        if len(cells) != self.width:
            return BadRow(record.line, f"has {len(cells)} fields; the header has {self.width}")
        traits: dict[str, Any] = {}
        for position, name, attribute in self.attributes:
            raw = cells[position]
            if not raw.strip():
                continue
            try:
                value = attribute.parse(raw)
            except BadValue as error:
                return BadRow(record.line, f"{error} ({attribute.type.name})", name)
            traits[attribute.attribute] = value
            label = attribute.band(value)
            if label is not None:
                traits[attribute.band_key] = label
        message = self._identified(record, traits)
        if isinstance(message, BadRow):
            return message
        if self.timestamp is not None and cells[self.timestamp].strip():
            message["timestamp"] = cells[self.timestamp].strip()
        message["messageId"] = self._message_id(cells)
        return message

    def _identified(self, record: Record, traits: dict[str, Any]) -> dict[str, Any] | BadRow:
        """Put each identifier where the Segment spec expects it; a row needs at least one."""
        message: dict[str, Any] = {"type": "identify", "traits": traits}
        context: dict[str, Any] = {}
        first: tuple[IdentifierColumn, str] | None = None
        for position, column in self.identifiers:
            value = record.fields[position].strip()
            if not value:
                continue
            first = first or (column, value)
            problem = _place(column, value, message, traits, context)
            if problem:
                return BadRow(record.line, problem, column.column)
        if first is None:
            return BadRow(record.line, "has no identifier (every identifier column is empty)")
        if "userId" not in message and "anonymousId" not in message:
            # Only an e-mail, phone or other id: a stable anonymous id derived from it keeps re-imports together.
            kind, value = first
            message["anonymousId"] = "csv-" + str(
                uuid.uuid5(_IMPORT_IDS, f"{kind.kind.value}:{kind.namespace}:{value}")
            )
        if context:
            message["context"] = context
        return message

    def _message_id(self, cells: list[str]) -> str:
        """A hash of the mapped columns' names and values: the same row always gets the same id."""
        digest = hashlib.sha256()
        for name, value in zip(self._columns, cells, strict=True):
            digest.update(name.encode() + b"\x1f" + value.encode() + b"\x1e")
        return "csv-" + str(uuid.UUID(bytes=digest.digest()[:16]))


def _place(
    column: IdentifierColumn,
    value: str,
    message: dict[str, Any],
    traits: dict[str, Any],
    context: dict[str, Any],
) -> str | None:
    """Write one identifier into the message; returns a problem (without the value) if it is unusable."""
    kind = column.kind
    if kind is IdentifierKind.USER_ID:
        message["userId"] = value
    elif kind is IdentifierKind.ANONYMOUS_ID:
        message["anonymousId"] = value
    elif kind is IdentifierKind.EMAIL:
        if "@" not in value or any(c.isspace() for c in value):
            return "is not an e-mail address"
        traits["email"] = value
    elif kind is IdentifierKind.PHONE:
        traits["phone"] = value
    elif kind is IdentifierKind.DEVICE_ID:
        context.setdefault("device", {})["id"] = value
    elif kind is IdentifierKind.ADVERTISING_ID:
        context.setdefault("device", {})["advertisingId"] = value
    else:
        external = {"id": value, "type": column.namespace, "collection": "users", "encoding": "none"}
        context.setdefault("externalIds", []).append(external)
    return None


@dataclass
class ImportReport:
    """Counts and the first bad rows of one import."""

    rows_read: int = 0
    rows_imported: int = 0
    rows_duplicate: int = 0
    bad_rows: list[BadRow] = field(default_factory=list)
    rows_rejected: int = 0

    def reject(self, bad: BadRow) -> None:
        """Count a bad row; keep it if the report has room."""
        self.rows_rejected += 1
        if len(self.bad_rows) < MAX_BAD_ROWS:
            self.bad_rows.append(bad)

    @property
    def truncated(self) -> bool:
        """True when more rows were bad than the report holds."""
        return self.rows_rejected > len(self.bad_rows)
