"""`python -m fgsn` runs the command line."""

import sys

from fgsn.cli import main

sys.exit(main())
