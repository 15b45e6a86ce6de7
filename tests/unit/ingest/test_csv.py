"""CSV onboarding: the push parser (chunks split anywhere, quoting, BOM, CRLF, line numbers) and row mapping."""

from __future__ import annotations

import csv
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cdp.errors import InvalidInput
from services.ingest.domain.catalog import Attribute, AttributeType, Band
from services.ingest.domain.csv_import import (
    MAX_RECORD_CHARS,
    AttributeColumn,
    BadRow,
    CsvParser,
    IdentifierColumn,
    IdentifierKind,
    ImportReport,
    ImportSpec,
    Record,
    RowMapper,
    validate_spec,
)

CATALOG = {
    "age": Attribute(
        "age", "age", AttributeType.INTEGER, bands=(Band("<25", None, 25), Band("25+", 25, None))
    ),
    "vip": Attribute("vip", "vip", AttributeType.BOOLEAN),
}
SPEC = ImportSpec(
    identifier_columns=(
        IdentifierColumn("user_id", IdentifierKind.USER_ID),
        IdentifierColumn("email", IdentifierKind.EMAIL),
    ),
    attribute_columns=(AttributeColumn("age", "age"), AttributeColumn("vip", "vip")),
)


def parse(data: bytes, chunk: int = 7, delimiter: str = ",") -> list[Record | BadRow]:
    parser = CsvParser(delimiter)
    out: list[Record | BadRow] = []
    for start in range(0, len(data), chunk):
        out.extend(parser.feed(data[start : start + chunk]))
    return out + parser.finish()


def test_quoted_fields_crlf_and_bom_with_line_numbers_of_the_first_line() -> None:
    data = '\ufeffid,note\r\n1,"a, b"\r\n2,"two\r\nlines"\r\n3,"say ""hi"""\r\n\r\n4,last'.encode()
    records = parse(data, chunk=3)
    assert records == [
        Record(1, ["id", "note"]),
        Record(2, ["1", "a, b"]),
        Record(3, ["2", "two\r\nlines"]),
        Record(5, ["3", 'say "hi"']),
        Record(7, ["4", "last"]),
    ]


def test_a_multibyte_character_split_between_chunks_survives() -> None:
    data = "name\nJosé Zoë\n".encode()
    for chunk in range(1, 6):
        assert parse(data, chunk=chunk)[1] == Record(2, ["José Zoë"])


def test_invalid_utf8_and_an_unclosed_quote_are_bad_rows() -> None:
    records = parse(b'id\n1\n\xff\xfe\n2,"open\n3\n', chunk=4)
    assert records[:2] == [Record(1, ["id"]), Record(2, ["1"])]
    assert isinstance(records[2], BadRow) and records[2].line == 3 and "UTF-8" in records[2].reason
    assert isinstance(records[3], BadRow) and records[3].line == 4 and "not closed" in records[3].reason


def test_a_runaway_quote_stops_the_parse_instead_of_holding_the_file() -> None:
    parser = CsvParser()
    out = parser.feed(b'id\n"never closed\n')
    filler = (b"x" * 1000 + b"\n") * (MAX_RECORD_CHARS // 1000 + 2)
    out += parser.feed(filler)
    assert parser.stopped
    assert isinstance(out[-1], BadRow) and out[-1].line == 2
    assert parser.feed(b"more\n") == [] and parser.finish() == []


def test_a_mid_field_quote_is_a_literal_as_in_the_csv_module() -> None:
    assert parse(b"h,w\n5'10\",tall\nnext,row\n") == [
        Record(1, ["h", "w"]),
        Record(2, ["5'10\"", "tall"]),
        Record(3, ["next", "row"]),
    ]


cell = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\ufeff\ufffd"), max_size=12)
tables = st.lists(st.lists(cell, min_size=3, max_size=3), min_size=1, max_size=20)


@settings(max_examples=60, deadline=None)
@given(tables, st.integers(min_value=1, max_value=40), st.sampled_from([",", ";", "\t"]))
def test_any_file_the_csv_module_writes_parses_back_whatever_the_chunking(
    table: list[list[str]], chunk: int, delimiter: str
) -> None:
    written, expected, line = [], [], 1
    for row in table:
        buffer = io.StringIO(newline="")
        csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n").writerow(row)
        written.append(buffer.getvalue())
        expected.append(Record(line, row))
        line += buffer.getvalue().count("\n")  # lines are LF-terminated; a lone CR is data
    assert parse("".join(written).encode(), chunk, delimiter) == expected


def mapper() -> RowMapper:
    return RowMapper.for_header(Record(1, ["user_id", "email", "age", "vip", "unused"]), SPEC, CATALOG)


def test_a_row_becomes_an_identify_with_typed_traits_and_bands() -> None:
    message = mapper().to_message(Record(2, ["u-1", "a@example.com", "27", "yes", "ignored"]))
    assert isinstance(message, dict)
    assert message["type"] == "identify" and message["userId"] == "u-1"
    assert message["traits"] == {"email": "a@example.com", "age": 27, "ageBand": "25+", "vip": True}
    assert message["messageId"].startswith("csv-")


def test_message_ids_depend_on_the_row_content_only() -> None:
    rows = mapper()
    first = rows.to_message(Record(2, ["u-1", "", "27", "", ""]))
    again = rows.to_message(Record(9, ["u-1", "", "27", "", ""]))
    other = rows.to_message(Record(2, ["u-1", "", "28", "", ""]))
    assert isinstance(first, dict) and isinstance(again, dict) and isinstance(other, dict)
    assert first["messageId"] == again["messageId"] != other["messageId"]


def test_an_email_only_row_gets_a_stable_anonymous_id() -> None:
    one = mapper().to_message(Record(2, ["", "b@example.com", "", "", ""]))
    two = mapper().to_message(Record(3, ["", "b@example.com", "30", "", ""]))
    assert isinstance(one, dict) and isinstance(two, dict)
    assert one["anonymousId"] == two["anonymousId"] and "b@example.com" not in one["anonymousId"]


@pytest.mark.parametrize(
    ("cells", "column", "words"),
    [
        (["u", "", "27"], "", "3 fields"),
        (["", "", "27", "", ""], "", "no identifier"),
        (["u", "not-an-email", "", "", ""], "email", "e-mail"),
        (["u", "", "twenty", "", ""], "age", "INTEGER"),
        (["u", "", "", "maybe", ""], "vip", "boolean"),
    ],
)
def test_bad_rows_name_line_column_and_reason_without_the_value(
    cells: list[str], column: str, words: str
) -> None:
    bad = mapper().to_message(Record(4, cells))
    assert isinstance(bad, BadRow) and bad.line == 4 and bad.column == column and words in bad.reason
    assert all(cell not in bad.reason for cell in cells if len(cell) > 2)


def test_the_header_must_hold_the_columns_and_the_catalog_the_attributes() -> None:
    spec = ImportSpec(
        identifier_columns=(IdentifierColumn("id", IdentifierKind.USER_ID),),
        attribute_columns=(AttributeColumn("age", "age"), AttributeColumn("x", "unknown")),
        timestamp_column="when",
    )
    with pytest.raises(InvalidInput) as raised:
        RowMapper.for_header(Record(1, ["user", "age", "x"]), spec, CATALOG)
    assert [v.field for v in raised.value.violations] == [
        "header.identifier_columns[0].column",
        "header.attribute_columns[1].attribute_id",
        "header.timestamp_column",
    ]
    with pytest.raises(InvalidInput):
        validate_spec(ImportSpec(identifier_columns=(), delimiter=";;"))


def test_the_report_keeps_the_first_thousand_bad_rows_and_counts_all() -> None:
    report = ImportReport()
    for line in range(2, 1203):
        report.reject(BadRow(line, "bad"))
    assert report.rows_rejected == 1201 and len(report.bad_rows) == 1000 and report.truncated
    assert report.bad_rows[0].line == 2
