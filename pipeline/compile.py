"""`python -m pipeline.compile`: the documented entry point; the stage lives in pipeline/dfc/compile.py."""

import sys

from pipeline.dfc.compile import main

if __name__ == "__main__":
    sys.exit(main())
