"""`python -m pipeline.optimize`: the documented entry point; the stage lives in pipeline/dfc/optimize.py."""

import sys

from pipeline.dfc.optimize import main

if __name__ == "__main__":
    sys.exit(main())
