"""`python -m sweeps.cli ...`, the same as `dsl-sweep ...`."""
from __future__ import annotations

import sys

from sweeps.cli.app import main

if __name__ == "__main__":
    sys.exit(main())
