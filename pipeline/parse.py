"""`python -m pipeline.parse`: the documented entry point; the stage lives in pipeline/dfc/parse.py."""

import sys

from pipeline.dfc.parse import main

if __name__ == "__main__":
    sys.exit(main())
