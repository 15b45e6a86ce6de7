"""Event catalog benchmark: decoding and encoding cost per event type (`python -m bench.events`)."""
