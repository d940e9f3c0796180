"""Benchmarks: speed of each stage beside its limit, measured in one run on this machine (`python -m bench`)."""
