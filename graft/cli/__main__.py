"""`python -m graft.cli`: the same as the `graft` console script."""

import sys

from graft.cli.app import main

sys.exit(main())
