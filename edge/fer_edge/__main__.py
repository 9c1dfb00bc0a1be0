"""``python -m fer_edge``: the ``fer-edge`` command, for a Python whose scripts folder is not on PATH."""

import sys

from fer_edge.cli import main

if __name__ == "__main__":
    sys.exit(main())
