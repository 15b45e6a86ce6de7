"""The identity service: resolves identifiers into one profile per person, explains and reverses merges."""
