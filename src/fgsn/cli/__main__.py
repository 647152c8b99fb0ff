"""`python -m fgsn.cli` runs the command line."""

import sys

from fgsn.cli import main

sys.exit(main())
