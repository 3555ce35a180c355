"""`python -m pipeline.export`: the documented entry point; the stage lives in pipeline/export/export.py."""

import sys

from pipeline.export.export import main

sys.exit(main())
