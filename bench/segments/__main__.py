"""`python -m bench.segments`: the bulk evaluation benchmark (see bench.segments.bulk)."""

from bench.segments.bulk import main

if __name__ == "__main__":
    main()
