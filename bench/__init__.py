"""Benchmarks of securewsgi against other mutual-TLS WSGI servers.

`python -m bench` runs them (bench/run.py); docs/source/benchmarks.rst shows the results.
"""
