"""The benchmark in virtual time (see BENCHMARKS.md): `python -m throttler bench`."""
