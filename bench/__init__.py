"""Benchmarks of lfxai_utils against the authors' lfxai 0.1.1 package (``make bench``; see run_benchmarks.py)."""
