"""`python -m ferry ...`: the same command line as the `ferry` console script."""

import sys

from ferry.server.cli import main

sys.exit(main())
