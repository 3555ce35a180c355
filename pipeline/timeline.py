"""`python -m pipeline.timeline`: the documented entry point; the stage lives in pipeline/dfc/timeline.py."""

import sys

from pipeline.dfc.timeline import main

if __name__ == "__main__":
    sys.exit(main())
