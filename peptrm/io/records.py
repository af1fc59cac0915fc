"""Spectrum and result records, and `SpectrumRef`, which says where each came from.

`SpectrumRef` is the one way to write a spectrum's location; every message about
a spectrum starts with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


class InputError(Exception):
    """A file cannot be read at all; the message names the file (and line)."""


@dataclass(frozen=True)
class SpectrumRef:
    """Where a spectrum came from: file, 0-based index in that file, and title.

    `native_id` is the mzML spectrum id (mzXML: ``scan=N``), the identifier
    downstream tools join on; "" for MGF, whose spectra are known by index.
    `retention_time` is in seconds (MGF RTINSECONDS, mzML/mzXML scan start
    time), None when the file does not say.
    """

    path: str
    index: int
    title: str = ""
    native_id: str = ""
    retention_time: float | None = None

    def __str__(self) -> str:
        title = f" (TITLE={self.title})" if self.title else ""
        return f"{Path(self.path).name}, spectrum {self.index}{title}"


@dataclass
class Spectrum:
    """One MS/MS spectrum ready for preprocessing.

    `mz` is sorted ascending (float64, Th); `intensity` is float32. `peptide` is
    the SEQ= annotation as written (Casanovo notation), or None when unlabelled;
    `label_problem` says why an annotation present in the file cannot be used.
    """

    ref: SpectrumRef
    mz: np.ndarray
    intensity: np.ndarray
    precursor_mz: float
    charge: int
    peptide: str | None = None
    label_problem: str | None = None


@dataclass
class Skipped:
    """A spectrum we cannot sequence, kept so that it still gets an output row."""

    ref: SpectrumRef
    reason: str
    precursor_mz: float | None = None
    charge: int | None = None
    peptide: str | None = None


@dataclass
class Prediction:
    """One output row: a candidate peptide for one spectrum (or why there is none)."""

    ref: SpectrumRef
    peptide: str  # Casanovo notation; "" when skipped
    score: float  # peptide score in [0, 1]; nan when skipped
    aa_scores: list[float] = field(default_factory=list)  # one per token
    charge: int | None = None
    precursor_mz: float | None = None  # observed
    calc_mz: float | None = None  # of `peptide` at `charge`
    mass_error_ppm: float | None = None  # observed vs calc, after the isotope offset
    isotope: int | None = None  # 13C isotope offset used by the mass constraint
    rank: int = 1
    status: str = "ok"  # ok | unconstrained (no peptide fits) | skipped: <reason>
    n_steps: int | None = None  # refinement steps run for this spectrum
    q_value: float | None = None  # estimated FDR of accepting rank-1 rows this good
