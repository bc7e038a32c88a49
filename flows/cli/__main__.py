"""`python -m flows.cli`: the `durian` command."""

import sys

from flows.cli import main

sys.exit(main())
