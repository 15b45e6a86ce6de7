"""The edge's request validation: what `validate_request` costs on the largest request there is.

    .venv/bin/python -m bench.runtime [--messages 2500] [--rounds 30]

The interceptor validates every request before the servicer sees it. The largest is an ingest `BatchRequest`
of 2,500 realistic messages (properties, context, timestamp and sentAt set; Structs are opaque to the walk).
Its cost is printed beside two baselines measured in the same run on the same request: deserialising it (what
gRPC pays for every call anyway) and turning its messages into Segment's JSON (what `Batch` does next). The
best of `--rounds` runs is kept for each, so load from other processes inflates none of them much.
"""

from __future__ import annotations

import argparse
import functools
import time
from collections.abc import Callable

from google.protobuf import json_format

from bench.ingest.load import a_message
from cdp.common.v1 import identity_pb2, message_pb2
from cdp.identity.v1 import identity_service_pb2
from cdp.ingest.v1 import ingest_service_pb2 as pb
from cdp.runtime.validation import validate_request
from services.ingest.grpc_api import raw_message


def best_of(rounds: int, work: Callable[[], object]) -> float:
    """The fastest of `rounds` runs of `work`, in seconds."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def a_batch(messages: int) -> pb.BatchRequest:
    """A batch of realistic tracks, each with a timestamp and sentAt (the fields the walk checks)."""
    times = {"timestamp": "2026-11-30T10:00:00.123Z", "sentAt": "2026-11-30T10:00:01Z"}
    return pb.BatchRequest(
        messages=[
            json_format.ParseDict({**a_message(n, "bench"), **times}, message_pb2.Message())
            for n in range(messages)
        ]
    )


def main() -> None:
    """Measure and print."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=2500)
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    batch = a_batch(args.messages)
    payload = batch.SerializeToString()
    validate = best_of(args.rounds, functools.partial(validate_request, batch))
    parse = best_of(args.rounds, lambda: pb.BatchRequest.FromString(payload))
    convert = best_of(args.rounds, lambda: [raw_message(m) for m in batch.messages])
    small = identity_service_pb2.GetProfileRequest(
        profile=identity_pb2.ProfileRef(profile_id="p-1"), as_of={"seconds": 1_800_000_000}
    )

    def thousand_small() -> None:
        for _ in range(1000):
            validate_request(small)

    per_small = best_of(args.rounds, thousand_small) / 1000
    print(f"BatchRequest of {args.messages} messages, {len(payload) / 1e3:,.0f} KB serialised")
    print(
        f"validate_request:        {validate * 1e6:9,.0f} µs/call  {validate / args.messages * 1e6:6.2f} µs/message"
    )
    print(f"deserialise (baseline):  {parse * 1e6:9,.0f} µs/call  validation = {validate / parse:.2f} x this")
    print(
        f"to JSON (Batch's next):  {convert * 1e6:9,.0f} µs/call  validation = {validate / convert:.2f} x this"
    )
    print(f"validate_request on a GetProfileRequest: {per_small * 1e6:.2f} µs/call")


if __name__ == "__main__":
    main()
