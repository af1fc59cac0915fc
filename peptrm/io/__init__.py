"""Spectrum and result records; MGF/mzML/mzXML readers; mzTab and CSV writers.

Readers stream: a file is read one spectrum at a time, so its size does not
matter. Every spectrum in a file gives exactly one record, in file order: a
`Spectrum` when it can be sequenced, a `Skipped` (with a reason that starts with
the spectrum's `SpectrumRef`) when it cannot. Only a file that cannot be read at
all raises `InputError`.
"""

from peptrm.io.readers import (
    NO_CHARGE_HINT,
    estimate_spectra,
    read_labelled,
    read_spectra,
    spectrum_files,
    spectrum_suffix,
)
from peptrm.io.records import InputError, Prediction, Skipped, Spectrum, SpectrumRef
from peptrm.io.results import (
    CSV_COLUMNS,
    NULL,
    OUTPUT_SUFFIXES,
    PSM_COLUMNS,
    check_output_path,
    read_predictions,
    replace_when_done,
    write_csv,
    write_mztab,
)

__all__ = [
    "CSV_COLUMNS",
    "NO_CHARGE_HINT",
    "NULL",
    "OUTPUT_SUFFIXES",
    "PSM_COLUMNS",
    "InputError",
    "Prediction",
    "Skipped",
    "Spectrum",
    "SpectrumRef",
    "check_output_path",
    "estimate_spectra",
    "read_labelled",
    "read_predictions",
    "read_spectra",
    "replace_when_done",
    "spectrum_files",
    "spectrum_suffix",
    "write_csv",
    "write_mztab",
]
