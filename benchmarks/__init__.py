"""Benchmarks: pipec's runtime overhead against hand-written engine programs."""
