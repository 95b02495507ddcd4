"""Benchmarks of securewsgi against other mutual-TLS WSGI servers (issue 8).

`python -m bench` runs them (bench/run.py); docs/benchmarks.rst shows the results.
"""
