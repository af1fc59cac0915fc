"""PepTRM: de novo peptide sequencing with a Tiny Recursive Model."""

__version__ = "0.1.0"
