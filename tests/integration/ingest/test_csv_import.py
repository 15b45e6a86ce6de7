"""CSV onboarding over real gRPC: rows become identifies with banded traits, bad rows are reported, re-imports
add nothing, dry runs append nothing, and a large file streams in bounded memory."""

from __future__ import annotations

import time
import tracemalloc
from collections.abc import AsyncIterator, Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from cdp.common.v1 import identity_pb2
from cdp.eventlog.port import EventFilter
from cdp.events import CsvImportCompleted, from_recorded
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.keyring import load_master_key, open_keyring, subjects
from cdp.runtime import resources
from cdp.runtime.errors import field_violations
from cdp.runtime.secrets import master_key_file
from tests.integration.ingest.conftest import WRITE_KEY, Ingest, running_ingest, settings_for

ADMIN = (("authorization", "Bearer dev-admin-token"),)
CHUNK = 64 * 1024


def header(**overrides: Any) -> pb.CsvImportHeader:
    fields: dict[str, Any] = {
        "identifier_columns": [
            pb.IdentifierColumn(column="customer_id", type=identity_pb2.IDENTIFIER_TYPE_USER_ID),
            pb.IdentifierColumn(column="email", type=identity_pb2.IDENTIFIER_TYPE_EMAIL),
        ],
        "attribute_columns": [
            pb.AttributeColumn(column="age", attribute_id="age"),
            pb.AttributeColumn(column="spend", attribute_id="lifetime_spend"),
        ],
        **overrides,
    }
    return pb.CsvImportHeader(**fields)


async def requests(head: pb.CsvImportHeader, chunks: Iterator[bytes] | Sequence[bytes]) -> AsyncIterator[Any]:
    yield pb.ImportCsvRequest(header=head)
    for chunk in chunks:
        yield pb.ImportCsvRequest(chunk=chunk)


def chunked(data: bytes, size: int = 5) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


async def define_catalog(ingest: Ingest) -> None:
    bands = [
        pb.Band(label="18-24", lower_bound=18, upper_bound=25),
        pb.Band(label="25-34", lower_bound=25, upper_bound=35),
        pb.Band(label="35+", lower_bound=35),
    ]
    spend = [
        pb.Band(label="0-99", lower_bound=0, upper_bound=100),
        pb.Band(label="100-249", lower_bound=100, upper_bound=250),
        pb.Band(label="250+", lower_bound=250),
    ]
    for attribute in (
        pb.Attribute(attribute_id="age", attribute="age", type=pb.ATTRIBUTE_TYPE_INTEGER, bands=bands),
        pb.Attribute(
            attribute_id="lifetime_spend",
            attribute="lifetimeSpend",
            type=pb.ATTRIBUTE_TYPE_NUMBER,
            bands=spend,
        ),
    ):
        await ingest.stub.DefineAttribute(pb.DefineAttributeRequest(attribute=attribute), metadata=ADMIN)


FILE = (
    "\ufeffcustomer_id,email,age,spend,notes\r\n"
    'c-1,ann@example.com,27,130,"likes, commas"\r\n'
    'c-2,,41,12.5,"two\r\nlines"\r\n'
    ",,30,10,no identifier\r\n"
    "c-4,bob@example.com,old,10,bad age\r\n"
    ",carl@example.com,19,,email only\r\n"
    "c-6,dee@example.com,33\r\n"
).encode()


async def test_rows_become_identifies_with_bands_and_bad_rows_are_reported(ingest: Ingest) -> None:
    await define_catalog(ingest)
    reply = await ingest.stub.ImportCsv(
        requests(header(import_id="first"), chunked(FILE)), metadata=WRITE_KEY
    )
    assert (reply.import_id, reply.rows_read, reply.rows_imported, reply.rows_rejected) == ("first", 6, 3, 3)
    assert [(b.line_number, b.column) for b in reply.bad_rows] == [(5, ""), (6, "age"), (8, "")]
    assert "no identifier" in reply.bad_rows[0].reason and "old" not in reply.bad_rows[1].reason
    assert not reply.bad_rows_truncated

    collected = await ingest.collected()
    assert len(collected) == 3 and {e.message_type for e in collected} == {"identify"}
    traits = [e.open_payload(ingest.keyring)["traits"] for e in collected]
    assert traits[0] == {
        "email": "ann@example.com",
        "age": 27,
        "ageBand": "25-34",
        "lifetimeSpend": 130.0,
        "lifetimeSpendBand": "100-249",
    }
    assert traits[1]["ageBand"] == "35+" and traits[2] == {
        "email": "carl@example.com",
        "age": 19,
        "ageBand": "18-24",
    }
    assert collected[0].subject_id == ingest.subject("user_id", "c-1")

    [completed] = [
        from_recorded(r)
        for r in await ingest.log.read_all(filter=EventFilter(event_types=("CsvImportCompleted",)))
    ]
    assert isinstance(completed, CsvImportCompleted)
    assert (completed.rows_read, completed.rows_accepted, completed.rows_rejected) == (6, 3, 3)


async def test_importing_the_same_file_again_adds_nothing(ingest: Ingest) -> None:
    await define_catalog(ingest)
    await ingest.stub.ImportCsv(requests(header(), [FILE]), metadata=WRITE_KEY)
    again = await ingest.stub.ImportCsv(requests(header(), chunked(FILE, 3)), metadata=WRITE_KEY)
    assert (again.rows_read, again.rows_imported, again.rows_rejected) == (6, 0, 3)
    assert len(await ingest.collected()) == 3


async def test_a_dry_run_reports_but_appends_nothing(ingest: Ingest) -> None:
    await define_catalog(ingest)
    reply = await ingest.stub.ImportCsv(requests(header(dry_run=True), [FILE]), metadata=WRITE_KEY)
    assert (reply.rows_read, reply.rows_rejected) == (6, 3) and reply.rows_imported == 0
    assert await ingest.collected() == []
    assert not await ingest.log.read_all(filter=EventFilter(event_types=("CsvImportCompleted",)))


async def test_a_header_naming_unknown_columns_or_attributes_is_refused(ingest: Ingest) -> None:
    await define_catalog(ingest)
    bad = header(attribute_columns=[pb.AttributeColumn(column="age", attribute_id="shoe_size")])
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await ingest.stub.ImportCsv(requests(bad, [FILE]), metadata=WRITE_KEY)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [f for f, _ in field_violations(raised.value)] == ["header.attribute_columns[0].attribute_id"]
    with pytest.raises(grpc.aio.AioRpcError) as no_header:
        await ingest.stub.ImportCsv(_only_chunks(), metadata=WRITE_KEY)
    assert no_header.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def _only_chunks() -> AsyncIterator[pb.ImportCsvRequest]:
    yield pb.ImportCsvRequest(chunk=b"customer_id\n1\n")


def generated(rows: int, first: int = 0) -> Iterator[bytes]:
    """A CSV file of `rows` distinct customers, produced chunk by chunk (never held whole)."""
    yield b"customer_id,email,age,spend\n"
    buffer: list[str] = []
    for n in range(first, first + rows):
        buffer.append(f"c-{n},c{n}@example.com,{18 + n % 60},{n % 400}.5\n")
        if len(buffer) == 2000:
            yield "".join(buffer).encode()
            buffer = []
    if buffer:
        yield "".join(buffer).encode()


async def import_generated(ingest: Ingest, rows: int, first: int) -> tuple[pb.ImportCsvResponse, int, float]:
    """Import a generated file; returns the reply, the traced memory peak (bytes) and the seconds taken."""
    tracemalloc.start()
    try:
        started = time.perf_counter()
        reply = await ingest.stub.ImportCsv(requests(header(), generated(rows, first)), metadata=WRITE_KEY)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return reply, peak, elapsed


@pytest.mark.timeout(120)
async def test_a_large_file_streams_in_flat_memory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The keyring and subject-id caches hold up to 100,000 subjects each: bounded, but far above this test's
    # sizes, so their growth would hide the import's own. A real keyring with a small cache isolates it.
    settings = settings_for(tmp_path)
    master = load_master_key(settings.master_key, master_key_file(settings))
    monkeypatch.setattr(
        resources, "keyring", lambda _: open_keyring(settings.keyring_url, master, cache_size=1_000)
    )
    monkeypatch.setattr(subjects, "_RECENT", 1_000)
    async with running_ingest(settings) as ingest:
        await define_catalog(ingest)
        small, small_peak, _ = await import_generated(ingest, 2_000, 0)
        large, large_peak, seconds = await import_generated(ingest, 20_000, 2_000)
    assert (small.rows_imported, large.rows_imported) == (2_000, 20_000)
    print(
        f"\n20k rows in {seconds:.1f} s under tracemalloc; peaks {small_peak / 2**20:.1f} / {large_peak / 2**20:.1f} MiB"
    )
    # Ten times the rows, about the same peak: memory follows the chunk and batch sizes, not the file size.
    assert large_peak < small_peak * 1.5 + 2 * 2**20, (small_peak, large_peak)
