"""Speed claims, each a script printing a ratio against the plain way (docs/benchmarks.md)."""
