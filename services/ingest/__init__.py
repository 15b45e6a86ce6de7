"""The ingest service: collects Segment-spec messages over gRPC and HTTP, tracking plans, CSV onboarding."""
