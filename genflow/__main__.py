"""``python -m genflow ...`` (and ``torchrun -m genflow ...``) is the same as the genflow command."""

import sys

from genflow.cli import main

sys.exit(main())
