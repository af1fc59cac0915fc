"""Spectrum and result records; MGF/mzML/mzXML readers; mzTab and CSV writers.

Readers stream: a file is read one spectrum at a time, so its size does not
matter. Every spectrum in a file gives exactly one record, in file order: a
`Spectrum` when it can be sequenced, a `Skipped` (with a reason that starts with
the spectrum's `SpectrumRef`) when it cannot. Only a file that cannot be read at
all raises `InputError`.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import urllib.parse
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pyteomics import mgf, mzml, mzxml

from peptrm import masses

log = logging.getLogger(__name__)


class InputError(Exception):
    """A file cannot be read at all; the message names the file (and line)."""


@dataclass(frozen=True)
class SpectrumRef:
    """Where a spectrum came from: file, 0-based index in that file, and title."""

    path: str
    index: int
    title: str = ""

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


# --------------------------------------------------------------------------------
# Reading spectra
# --------------------------------------------------------------------------------

NO_CHARGE_HINT = "pass --default-charge or fix the file"


def read_spectra(
    path: str | Path, default_charge: int | None = None
) -> Iterator[Spectrum | Skipped]:
    """Stream the spectra of an MGF, mzML or mzXML file, one record per spectrum.

    The format follows the extension (case-insensitive). `default_charge` stands
    in for a missing, zero or absurd precursor charge; without it such spectra
    are `Skipped`.

    Raises
    ------
    InputError
        When the file is missing, has an unknown extension or is not the format
        its extension claims.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".mgf":
        return _read_mgf(path, default_charge)
    if suffix in (".mzml", ".mzxml"):
        return _read_xml(path, default_charge, suffix)
    raise InputError(
        f"{path}: unknown extension {path.suffix!r} (use .mgf, .mzML or .mzXML)"
    )


class _PeakCounter:
    """Counts peaks dropped for NaN, infinite or negative values in one file."""

    def __init__(self) -> None:
        self.n_peaks = 0
        self.refs: list[SpectrumRef] = []

    def report(self, path: Path) -> None:
        if self.n_peaks:
            first = ", ".join(str(r.index) for r in self.refs[:5])
            log.warning(
                "%s: dropped %d peaks with NaN, infinite or negative m/z or intensity "
                "in %d spectra (first: %s)",
                path.name,
                self.n_peaks,
                len(self.refs),
                first,
            )


def _finite_peaks(
    ref: SpectrumRef, mz: np.ndarray, intensity: np.ndarray, counter: _PeakCounter
) -> tuple[np.ndarray, np.ndarray] | str:
    """Drop unusable peaks and sort by m/z; a reason string when none are left."""
    mz = np.asarray(mz, dtype=np.float64)
    intensity = np.asarray(intensity, dtype=np.float64)
    if len(mz) == 0:
        return f"{ref}: no peaks"
    good = np.isfinite(mz) & np.isfinite(intensity) & (mz > 0) & (intensity >= 0)
    n_bad = len(mz) - int(good.sum())
    if n_bad:
        counter.n_peaks += n_bad
        counter.refs.append(ref)
        if n_bad == len(mz):
            return (
                f"{ref}: all {n_bad} peaks have NaN, infinite or negative "
                "m/z or intensity"
            )
        mz, intensity = mz[good], intensity[good]
    order = np.argsort(mz, kind="stable")
    return mz[order], intensity[order].astype(np.float32)


def _check_charge(
    ref: SpectrumRef, charge: Any, written: str | None, default_charge: int | None
) -> int | str:
    """Choose the precursor charge, or say why the spectrum must be skipped."""
    if charge is not None and 1 <= charge <= masses.MAX_CHARGE:
        return int(charge)
    if default_charge is not None:
        return default_charge
    if written is None:
        return f"{ref}: no CHARGE line; {NO_CHARGE_HINT}"
    return (
        f"{ref}: CHARGE {written!r} is not one charge from 1 to {masses.MAX_CHARGE}; "
        f"{NO_CHARGE_HINT}"
    )


def _check_precursor(ref: SpectrumRef, precursor_mz: Any, written: str | None) -> str:
    """Why a precursor m/z is unusable, or "" when it is fine."""
    if written is None:
        return f"{ref}: no PEPMASS line; fix the file"
    if precursor_mz is None or not math.isfinite(precursor_mz) or precursor_mz <= 0:
        return f"{ref}: PEPMASS {written!r} is not a positive m/z; fix the file"
    return ""


def _label_problem(ref: SpectrumRef, peptide: str | None) -> str | None:
    if peptide is None:
        return None
    try:
        masses.parse(peptide)
    except masses.UnknownResidueError as error:
        return f"{ref}: {error}"
    return None


def _make_record(
    ref: SpectrumRef,
    mz: np.ndarray,
    intensity: np.ndarray,
    precursor: tuple[Any, str | None],
    charge: tuple[Any, str | None],
    peptide: str | None,
    default_charge: int | None,
    counter: _PeakCounter,
) -> Spectrum | Skipped:
    """Check one parsed spectrum and build its record.

    `precursor` and `charge` are each (parsed value, value as written or None).
    """
    problem = _check_precursor(ref, *precursor)
    precursor_mz = None if problem else float(precursor[0])
    charge_or_reason = _check_charge(ref, *charge, default_charge)
    if isinstance(charge_or_reason, str):
        problem = problem or charge_or_reason
        charge_value = None
    else:
        charge_value = charge_or_reason
    peaks = _finite_peaks(ref, mz, intensity, counter)
    if isinstance(peaks, str):
        problem = problem or peaks
    if problem:
        return Skipped(ref, problem, precursor_mz, charge_value, peptide)
    return Spectrum(
        ref,
        peaks[0],
        peaks[1],
        precursor_mz,
        charge_value,
        peptide,
        _label_problem(ref, peptide),
    )


# MGF: we split the file into BEGIN IONS ... END IONS blocks ourselves (streaming,
# line by line) and hand each block to pyteomics. pyteomics' reader stops at the
# first bad block; per-block parsing keeps one bad spectrum from costing the rest.


def _read_mgf(path: Path, default_charge: int | None) -> Iterator[Spectrum | Skipped]:
    counter = _PeakCounter()
    header: list[str] = []
    block: list[str] = []
    block_start = 0  # line number of the current BEGIN IONS (1-based)
    index = 0
    in_block = False
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line_number, line in enumerate(handle, start=1):
            if "\x00" in line:
                raise InputError(
                    f"{path}: binary data at line {line_number}; not an MGF file"
                )
            stripped = line.strip()
            if stripped == "BEGIN IONS":
                if in_block:
                    reason = (
                        f"no END IONS before the next BEGIN IONS at line {line_number}"
                    )
                    yield _truncated(path, index, block, reason)
                    index += 1
                in_block, block, block_start = True, [line], line_number
            elif stripped == "END IONS" and in_block:
                block.append(line)
                yield _parse_mgf_block(
                    path, index, header, block, block_start, default_charge, counter
                )
                index += 1
                in_block, block = False, []
            elif in_block:
                block.append(line)
            elif index == 0 and "=" in stripped:
                header.append(line)  # file-wide parameters before the first spectrum
    if in_block:
        yield _truncated(path, index, block, "no END IONS before the end of the file")
        index += 1
    counter.report(path)
    if index == 0:
        raise InputError(f"{path}: no BEGIN IONS line; not an MGF file")


def _block_param(block: list[str], key: str) -> str | None:
    """Return the value of `KEY=` in an MGF block as written (None if absent)."""
    prefix = key.upper() + "="
    for line in block:
        if line.lstrip().upper().startswith(prefix):
            return line.split("=", 1)[1].strip()
    return None


def _truncated(path: Path, index: int, block: list[str], reason: str) -> Skipped:
    ref = SpectrumRef(str(path), index, _block_param(block, "TITLE") or "")
    return Skipped(ref, f"{ref}: {reason}; the spectrum may be cut short")


def _bad_peak_line(block: list[str], block_start: int) -> str | None:
    """Describe the first peak line that is not two numbers (None if all are)."""
    for offset, line in enumerate(block):
        stripped = line.strip()
        if not stripped or stripped[0] in "#;!/" or "=" in stripped:
            continue
        if stripped in ("BEGIN IONS", "END IONS"):
            continue
        fields = stripped.split()
        try:
            float(fields[0])
            float(fields[1])
        except (ValueError, IndexError):
            line_number = block_start + offset
            return f"line {line_number} {stripped!r} is not an m/z and an intensity"
    return None


def _parse_mgf_block(
    path: Path,
    index: int,
    header: list[str],
    block: list[str],
    block_start: int,
    default_charge: int | None,
    counter: _PeakCounter,
) -> Spectrum | Skipped:
    title = _block_param(block, "TITLE") or ""
    ref = SpectrumRef(str(path), index, title)
    source = io.StringIO("".join(header + block))
    try:
        reader = mgf.MGF(source, read_charges=False, read_ions=False, use_header=True)
        parsed = next(iter(reader))
        params = parsed["params"]
        pepmass = params.get("pepmass", (None, None))[0]
        charges = params.get("charge") or []
    except Exception as error:  # any parse failure skips one spectrum
        problem = (
            _bad_peak_line(block, block_start) or f"cannot parse the block ({error})"
        )
        return Skipped(ref, f"{ref}: {problem}")
    written_charge = _block_param(block, "CHARGE") or _block_param(header, "CHARGE")
    written_pepmass = _block_param(block, "PEPMASS") or _block_param(header, "PEPMASS")
    charge = charges[0] if len(charges) == 1 else None  # several charges: ambiguous
    peptide = params.get("seq")
    return _make_record(
        ref,
        parsed["m/z array"],
        parsed["intensity array"],
        (pepmass, written_pepmass),
        (charge, written_charge),
        peptide or None,
        default_charge,
        counter,
    )


# mzML and mzXML: pyteomics indexes the file (reading the index at its end, or
# scanning for spectrum offsets) and we fetch spectra one by one, so a spectrum that
# fails to parse becomes one Skipped record instead of ending the iteration.
# `index` is the spectrum's position among all spectra in the file (the mzML
# `index` attribute); MS1 spectra (and MS3+) are skipped silently, so indices of
# yielded spectra have gaps. The title is the mzML spectrum id (its nativeID, such
# as "controllerType=0 controllerNumber=1 scan=2") or "scan=N" for mzXML.


def _read_xml(
    path: Path, default_charge: int | None, suffix: str
) -> Iterator[Spectrum | Skipped]:
    with open(path, "rb") as handle:
        head = handle.read(4096)
    root = b"<mzML" if suffix == ".mzml" else b"<mzXML"
    if root not in head and b"<indexedmzML" not in head:
        kind = "mzML" if suffix == ".mzml" else "mzXML"
        raise InputError(
            f"{path}: no <{kind}> element at the start; not an {kind} file"
        )
    try:
        if suffix == ".mzml":
            reader = mzml.MzML(str(path), use_index=True, decode_binary=True)
            ids = list(reader.index["spectrum"])
        else:
            reader = mzxml.MzXML(str(path), use_index=True, decode_binary=True)
            ids = list(reader.index["scan"])
    except Exception as error:  # pyteomics raises many kinds
        raise InputError(f"{path}: cannot read the file ({error})") from error
    return _iterate_xml(path, reader, ids, default_charge, suffix)


def _iterate_xml(
    path: Path, reader: Any, ids: list[str], default_charge: int | None, suffix: str
) -> Iterator[Spectrum | Skipped]:
    counter = _PeakCounter()
    with reader:
        for index, spectrum_id in enumerate(ids):
            title = str(spectrum_id) if suffix == ".mzml" else f"scan={spectrum_id}"
            ref = SpectrumRef(str(path), index, title)
            try:
                spectrum = reader.get_by_id(spectrum_id)
            except Exception as error:  # one bad spectrum, one row
                yield Skipped(ref, f"{ref}: cannot parse the spectrum ({error})")
                continue
            read = _mzml_fields if suffix == ".mzml" else _mzxml_fields
            try:
                level, precursor, charge = read(spectrum)
            except (KeyError, IndexError, TypeError, ValueError) as error:
                yield Skipped(ref, f"{ref}: cannot read the precursor ({error!r})")
                continue
            if level != 2:
                continue
            written_mz = None if precursor is None else str(precursor)
            written_charge = None if charge is None else str(charge)
            yield _make_record(
                ref,
                spectrum.get("m/z array", np.empty(0)),
                spectrum.get("intensity array", np.empty(0)),
                (precursor, written_mz),
                (charge, written_charge),
                None,
                default_charge,
                counter,
            )
    counter.report(path)


def _mzml_fields(spectrum: dict) -> tuple[int, float | None, int | None]:
    """MS level, precursor m/z and charge of a pyteomics mzML spectrum."""
    level = int(spectrum.get("ms level", 2 if "precursorList" in spectrum else 1))
    if level != 2:
        return level, None, None
    precursors = spectrum.get("precursorList", {}).get("precursor", [])
    if not precursors:
        return level, None, None
    ions = precursors[0].get("selectedIonList", {}).get("selectedIon", [{}])
    ion = ions[0] if ions else {}
    precursor = ion.get("selected ion m/z")
    charge = ion.get("charge state", ion.get("possible charge state"))
    return (
        level,
        None if precursor is None else float(precursor),
        None if charge is None else int(charge),
    )


def _mzxml_fields(spectrum: dict) -> tuple[int, float | None, int | None]:
    """MS level, precursor m/z and charge of a pyteomics mzXML scan."""
    level = int(spectrum.get("msLevel", 1))
    if level != 2:
        return level, None, None
    precursors = spectrum.get("precursorMz") or [{}]
    precursor = precursors[0].get("precursorMz")
    charge = precursors[0].get("precursorCharge")
    return (
        level,
        None if precursor is None else float(precursor),
        None if charge is None else int(charge),
    )


def read_labelled(
    paths: Iterable[str | Path], default_charge: int | None = None
) -> Iterator[Spectrum | Skipped]:
    """Stream spectra of several files, turning unusable labels into `Skipped`.

    For training and evaluation: a spectrum with no SEQ= or an unknown residue
    cannot teach or be scored, so it becomes a `Skipped` with the reason.
    """
    for path in paths:
        for record in read_spectra(path, default_charge):
            if isinstance(record, Skipped):
                yield record
            elif record.label_problem:
                yield Skipped(
                    record.ref,
                    record.label_problem,
                    record.precursor_mz,
                    record.charge,
                    record.peptide,
                )
            elif record.peptide is None:
                yield Skipped(
                    record.ref,
                    f"{record.ref}: no SEQ= annotation",
                    record.precursor_mz,
                    record.charge,
                )
            else:
                yield record


# --------------------------------------------------------------------------------
# Writing and reading results
# --------------------------------------------------------------------------------

NULL = "null"  # mzTab 1.0's missing value (section 5.5)

CSV_COLUMNS = (
    "file",
    "index",
    "title",
    "rank",
    "peptide",
    "proforma",
    "score",
    "aa_scores",
    "charge",
    "precursor_mz",
    "calc_mz",
    "mass_error_ppm",
    "isotope",
    "n_steps",
    "status",
)

_OPT = "opt_ms_run[1]_"
PSM_COLUMNS = (
    "sequence",
    "PSM_ID",
    "accession",
    "unique",
    "database",
    "database_version",
    "search_engine",
    "search_engine_score[1]",
    "modifications",
    "retention_time",
    "charge",
    "exp_mass_to_charge",
    "calc_mass_to_charge",
    "spectra_ref",
    "pre",
    "post",
    "start",
    "end",
    *(
        _OPT + name
        for name in (
            "aa_scores",
            "proforma",
            "casanovo_notation",
            "rank",
            "status",
            "title",
            "mass_error_ppm",
            "isotope",
            "n_steps",
        )
    ),
)


def _number(value: float | None, digits: int, missing: str = NULL) -> str:
    if value is None or not math.isfinite(value):
        return missing
    return f"{value:.{digits}f}"


def _integer(value: int | None, missing: str = NULL) -> str:
    return missing if value is None else str(int(value))


def _clean(text: str) -> str:
    """Text safe inside a tab-separated cell."""
    return " ".join(text.split()) if text else ""


def _peptide_columns(peptide: str) -> tuple[str, str, str]:
    """Plain residues, ProForma and mzTab modifications of a peptide ("" if none)."""
    if not peptide:
        return "", "", NULL
    try:
        return (
            masses.strip_modifications(peptide),
            masses.to_proforma(peptide),
            masses.mztab_modifications(peptide),
        )
    except masses.UnknownResidueError:
        return peptide, peptide, NULL


def _metadata(
    ms_runs: list[str], software_version: str, params: dict | None
) -> list[tuple[str, str]]:
    """Build the MTD lines of an mzTab 1.0 Summary Identification file."""
    lines = [
        ("mzTab-version", "1.0.0"),
        ("mzTab-mode", "Summary"),
        ("mzTab-type", "Identification"),
        ("description", f"PepTRM {software_version} de novo peptide sequencing"),
        (
            "software[1]",
            f"[MS, MS:1001456, analysis software, PepTRM {software_version}]",
        ),
    ]
    for i, (key, value) in enumerate(_flatten(params or {}).items(), start=1):
        lines.append((f"software[1]-setting[{i}]", f"{key} = {value}"))
    lines.append(
        (
            "psm_search_engine_score[1]",
            "[MS, MS:1001143, search engine specific score for PSMs, ]",
        )
    )
    unimod_c = masses.UNIMOD["C+57.021"]
    lines += [
        ("fixed_mod[1]", f"[UNIMOD, UNIMOD:{unimod_c[0]}, {unimod_c[1]}, ]"),
        ("fixed_mod[1]-site", "C"),
    ]
    variable = [m for m in masses.UNIMOD if m != "C+57.021"]
    for i, label in enumerate(variable, start=1):
        accession, name = masses.UNIMOD[label]
        site = "N-term" if label in masses.N_TERMINAL_MODIFICATIONS else label[0]
        lines.append((f"variable_mod[{i}]", f"[UNIMOD, UNIMOD:{accession}, {name}, ]"))
        lines.append((f"variable_mod[{i}]-site", site))
        if site == "N-term":
            lines.append((f"variable_mod[{i}]-position", "Any N-term"))
    for i, run in enumerate(ms_runs, start=1):
        lines.append((f"ms_run[{i}]-location", Path(run).resolve().as_uri()))
    return lines


def _flatten(params: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in params.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + str(key)] = value
    return out


def _run_numbers(ms_runs: list[str]) -> dict[str, int]:
    """ms_run number of each input file, by resolved path and by file name."""
    numbers: dict[str, int] = {}
    for i, run in enumerate(ms_runs, start=1):
        numbers.setdefault(str(Path(run).resolve()), i)
        numbers.setdefault(Path(run).name, i)
    return numbers


def _psm_row(prediction: Prediction, psm_id: int, run: int, version: str) -> list[str]:
    plain, proforma, modifications = _peptide_columns(prediction.peptide)
    ref = prediction.ref
    return [
        plain or NULL,
        str(psm_id),
        NULL,
        NULL,
        NULL,
        NULL,
        f"[MS, MS:1001456, analysis software, PepTRM {version}]",
        _number(prediction.score, 6),
        modifications,
        NULL,
        _integer(prediction.charge),
        _number(prediction.precursor_mz, 6),
        _number(prediction.calc_mz, 6),
        f"ms_run[{run}]:index={ref.index}",
        NULL,
        NULL,
        NULL,
        NULL,
        ",".join(f"{s:.5f}" for s in prediction.aa_scores) or NULL,
        proforma or NULL,
        prediction.peptide or NULL,
        str(prediction.rank),
        _clean(prediction.status) or NULL,
        _clean(ref.title) or NULL,
        _number(prediction.mass_error_ppm, 3),
        _integer(prediction.isotope),
        _integer(prediction.n_steps),
    ]


def write_mztab(
    path: str | Path,
    predictions: Iterable[Prediction],
    ms_runs: list[str],
    software_version: str,
    params: dict | None = None,
) -> None:
    """Write predictions as an mzTab 1.0 Summary Identification file, as Casanovo does.

    Rows are written as `predictions` are consumed, so they can be a stream.
    `ms_runs` lists the input files; each prediction's `ref.path` must be one of
    them. Skipped spectra keep their row: sequence ``null`` and a ``skipped: ...``
    status. `params` (a nested dict, such as the config) goes into
    ``software[1]-setting`` lines.
    """
    runs = _run_numbers(ms_runs)
    with open(path, "w", newline="") as handle:
        for key, value in _metadata(ms_runs, software_version, params):
            handle.write(f"MTD\t{key}\t{value}\n")
        handle.write("PSH\t" + "\t".join(PSM_COLUMNS) + "\n")
        for psm_id, prediction in enumerate(predictions, start=1):
            run_path = prediction.ref.path
            run = runs.get(str(Path(run_path).resolve())) or runs.get(
                Path(run_path).name
            )
            if run is None:
                raise ValueError(f"{prediction.ref}: {run_path} is not among ms_runs")
            row = _psm_row(prediction, psm_id, run, software_version)
            handle.write("PSM\t" + "\t".join(row) + "\n")


def write_csv(path: str | Path, predictions: Iterable[Prediction]) -> None:
    """Write predictions as CSV, one row per prediction, columns `CSV_COLUMNS`.

    Missing values are empty cells; `aa_scores` is comma-separated in one cell.
    """
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for p in predictions:
            _, proforma, _ = _peptide_columns(p.peptide)
            writer.writerow(
                [
                    p.ref.path,
                    p.ref.index,
                    p.ref.title,
                    p.rank,
                    p.peptide,
                    proforma,
                    _number(p.score, 6, ""),
                    ",".join(f"{s:.5f}" for s in p.aa_scores),
                    _integer(p.charge, ""),
                    _number(p.precursor_mz, 6, ""),
                    _number(p.calc_mz, 6, ""),
                    _number(p.mass_error_ppm, 3, ""),
                    _integer(p.isotope, ""),
                    _integer(p.n_steps, ""),
                    p.status,
                ]
            )


def _float(text: str) -> float | None:
    return None if text in ("", NULL) else float(text)


def _int(text: str) -> int | None:
    return None if text in ("", NULL) else int(text)


def _prediction(
    ref: SpectrumRef, row: dict[str, str], names: dict[str, str]
) -> Prediction:
    """Build a Prediction from a row whose columns are named through `names`."""
    peptide = row[names["peptide"]]
    score = _float(row[names["score"]])
    aa_scores = row[names["aa_scores"]]
    status = row[names["status"]]
    return Prediction(
        ref=ref,
        peptide="" if peptide == NULL else peptide,
        score=math.nan if score is None else score,
        aa_scores=[]
        if aa_scores in ("", NULL)
        else [float(s) for s in aa_scores.split(",")],
        charge=_int(row[names["charge"]]),
        precursor_mz=_float(row[names["precursor_mz"]]),
        calc_mz=_float(row[names["calc_mz"]]),
        mass_error_ppm=_float(row[names["mass_error_ppm"]]),
        isotope=_int(row[names["isotope"]]),
        rank=int(row[names["rank"]]),
        status="" if status == NULL else status,
        n_steps=_int(row[names["n_steps"]]),
    )


_CSV_NAMES = {name: name for name in CSV_COLUMNS}
_MZTAB_NAMES = {
    "peptide": _OPT + "casanovo_notation",
    "score": "search_engine_score[1]",
    "aa_scores": _OPT + "aa_scores",
    "charge": "charge",
    "precursor_mz": "exp_mass_to_charge",
    "calc_mz": "calc_mass_to_charge",
    "mass_error_ppm": _OPT + "mass_error_ppm",
    "isotope": _OPT + "isotope",
    "rank": _OPT + "rank",
    "status": _OPT + "status",
    "n_steps": _OPT + "n_steps",
}


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read back predictions written by `write_mztab` or `write_csv`.

    Each prediction's `ref.path` is the input file it came from (for mzTab, the
    ``ms_run[N]-location`` of its ``spectra_ref``), so predictions join to
    labelled spectra by (file name, index).

    Raises
    ------
    InputError
        When the file is missing or is neither our mzTab nor our CSV.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.startswith("MTD\t"):
            return _read_mztab(path, handle)
        reader = csv.DictReader(handle)
        missing = set(CSV_COLUMNS) - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{path}: not a PepTRM mzTab or CSV (missing columns {sorted(missing)})"
            )
        out = []
        for row in reader:
            ref = SpectrumRef(row["file"], int(row["index"]), row["title"])
            out.append(_prediction(ref, row, _CSV_NAMES))
        return out


def _uri_to_path(uri: str) -> str:
    """Turn an mzTab ``file://`` location into a local path (other text as is)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return uri
    return urllib.parse.unquote(parsed.path)


def _read_mztab(path: Path, handle: Iterable[str]) -> list[Prediction]:
    runs: dict[str, str] = {}
    header: list[str] = []
    out = []
    for line_number, line in enumerate(handle, start=1):
        cells = line.rstrip("\r\n").split("\t")
        if cells[0] == "MTD" and cells[1].endswith("-location"):
            runs[cells[1].split("-")[0]] = _uri_to_path(cells[2])
        elif cells[0] == "PSH":
            header = cells[1:]
        elif cells[0] == "PSM":
            row = dict(zip(header, cells[1:], strict=False))
            try:
                run, _, index = row["spectra_ref"].partition(":index=")
                title = row.get(_OPT + "title", NULL)
                ref = SpectrumRef(runs[run], int(index), "" if title == NULL else title)
                out.append(_prediction(ref, row, _MZTAB_NAMES))
            except (KeyError, ValueError) as error:
                raise InputError(
                    f"{path}, line {line_number}: bad PSM row ({error!r})"
                ) from error
    return out
