"""The governance service: consent, access and erasure requests, retention, and the replayable audit."""
