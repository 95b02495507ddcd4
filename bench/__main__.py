"""`python -m bench`: see bench/run.py and docs/source/benchmarks.rst."""
import sys

from .run import main

sys.exit(main())
