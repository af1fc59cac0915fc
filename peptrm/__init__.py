"""PepTRM: de novo peptide sequencing with a Tiny Recursive Model."""

__version__ = "0.1.0"
LOG_FORMAT = (
    "%(asctime)s %(levelname)s %(name)s: %(message)s"  # the CLI's and its workers'
)
