"""Load generators for the ingest bench; they run in child processes (spawned, so they import this module)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from google.protobuf import json_format

from cdp.common.v1 import message_pb2
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.ingest.v1 import ingest_service_pb2_grpc

WRITE_KEY = (("authorization", "Bearer bench-key"),)
BATCH = 100


PEOPLE = 5_000
"""How many different people the generated messages are about."""


def a_message(n: int, run: str, people: int = PEOPLE) -> dict[str, Any]:
    """A realistic track about person `n % people`: a few properties and the context an SDK sends."""
    return {
        "type": "MESSAGE_TYPE_TRACK",
        "messageId": f"{run}-{n}",
        "userId": f"user-{n % people}",
        "anonymousId": f"anon-{n % people}",
        "event": "Product Viewed",
        "properties": {"product_id": f"sku-{n % 500}", "price": 19.99, "currency": "EUR", "position": n % 12},
        "context": {
            "ip": "203.0.113.9",
            "userAgent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0",
            "library": {"name": "analytics-python", "version": "2.3.3"},
            "page": {"path": "/products/sku", "url": "https://shop.example/products/sku"},
        },
    }


def batches(total: int, run: str) -> list[bytes]:
    """Serialised BatchRequests, built before the clock starts so the client costs little."""
    requests = []
    for start in range(0, total, BATCH):
        messages = [
            json_format.ParseDict(a_message(n, run), message_pb2.Message())
            for n in range(start, min(total, start + BATCH))
        ]
        requests.append(pb.BatchRequest(messages=messages).SerializeToString())
    return requests


def load_batches(address: str, payloads: list[bytes], concurrency: int, out: Any) -> None:
    """Child process: send every batch with `concurrency` calls in flight; report (accepted, seconds)."""

    async def run() -> tuple[int, float]:
        async with grpc.aio.insecure_channel(address) as channel:
            # The payloads are serialised already: send the bytes as they are.
            call = channel.unary_unary(
                "/cdp.ingest.v1.IngestService/Batch",
                request_serializer=None,
                response_deserializer=pb.BatchResponse.FromString,
            )
            queue = list(reversed(payloads))
            accepted = 0

            async def worker() -> None:
                nonlocal accepted
                while queue:
                    reply = await call(queue.pop(), metadata=WRITE_KEY)
                    accepted += reply.accepted_count

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            return accepted, time.perf_counter() - started

    out.send(asyncio.run(run()))


def load_tracks(address: str, rate: float, seconds: float, run: str, out: Any) -> None:
    """Child process: open-loop Track calls at a steady rate; report each call's latency in ms."""

    async def run_calls() -> list[float]:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = ingest_service_pb2_grpc.IngestServiceStub(channel)
            requests = [
                pb.TrackRequest(message=json_format.ParseDict(a_message(n, run), message_pb2.Message()))
                for n in range(int(rate * seconds))
            ]
            await stub.Track(requests[0], metadata=WRITE_KEY)  # connect before timing
            latencies: list[float] = []

            async def one(request: pb.TrackRequest) -> None:
                started = time.perf_counter()
                await stub.Track(request, metadata=WRITE_KEY)
                latencies.append((time.perf_counter() - started) * 1000)

            tasks = []
            origin = time.perf_counter()
            for i, request in enumerate(requests[1:], start=1):
                delay = origin + i / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(one(request)))
            await asyncio.gather(*tasks)
            return latencies

    out.send(asyncio.run(run_calls()))
