"""Benchmarks of MonSisra (run as ``python -m bench.<name>``; results in ``bench/results/``)."""
