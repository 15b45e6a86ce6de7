"""Governance benchmarks: erasure and access export, in a log of a million events and through the cluster."""
