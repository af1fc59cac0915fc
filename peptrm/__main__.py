"""`python -m peptrm` runs the same command line as `peptrm`."""

import sys

from peptrm.cli import main

sys.exit(main())
