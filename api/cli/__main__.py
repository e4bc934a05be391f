"""`python -m api.cli`: the same command line as the `civis-vault` script."""

import sys

from api.cli import main

sys.exit(main())
