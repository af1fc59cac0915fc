"""PepTRM: de novo peptide sequencing with a Tiny Recursive Model."""

__version__ = "0.1.0"
# How the CLI and its decoding workers log.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
