"""DTQ benchmarks (``make bench``)."""
