"""`python -m securewsgi ...` is `securewsgi-run ...`."""
import sys

from .commands.run import main

sys.exit(main())
