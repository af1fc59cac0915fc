"""`python -m peptrm` runs the same command line as `peptrm`."""

from peptrm.cli import console

console()
