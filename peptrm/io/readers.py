"""MGF, mzML and mzXML readers that stream `Spectrum` and `Skipped` records.

Every spectrum in a file gives exactly one record, in file order; only a file
that cannot be read at all raises `InputError`.
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from pyteomics import mgf, mzml, mzxml

from peptrm import masses
from peptrm.io.records import InputError, Skipped, Spectrum, SpectrumRef

log = logging.getLogger(__name__)


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
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a spectrum file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = spectrum_suffix(path)
    if suffix == ".mgf":
        return _read_mgf(path, default_charge)
    if suffix in (".mzml", ".mzxml"):
        return _read_xml(path, default_charge, suffix)
    raise InputError(
        f"{path}: unknown extension {path.suffix!r} (use .mgf, .mzML or .mzXML, "
        "optionally gzipped as .gz)"
    )


SPECTRUM_SUFFIXES = (".mgf", ".mzml", ".mzxml")


def spectrum_suffix(path: str | Path) -> str:
    """The format extension of a spectrum file, lower case, looking past ``.gz``."""
    suffixes = [s.lower() for s in Path(path).suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return suffixes[-1] if suffixes else ""


def spectrum_files(folder: str | Path) -> list[Path]:
    """The spectrum files directly inside `folder` (gzipped too), sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and spectrum_suffix(p) in SPECTRUM_SUFFIXES
    )


_MS2_MARKERS = {
    ".mgf": b"BEGIN IONS",
    ".mzml": b'name="ms level" value="2"',
    ".mzxml": b'msLevel="2"',
}


def estimate_spectra(
    paths: Iterable[str | Path], chunk_size: int = 1 << 24
) -> int | None:
    """Roughly how many MS2 spectra `paths` hold, for a progress bar's total.

    Counts a marker in the raw bytes (BEGIN IONS; the MS level 2 attribute of
    mzML and mzXML as ProteoWizard writes it), about 1 s per GB; None when a file
    is gzipped or unreadable, since decompressing twice costs as much as reading.
    """
    total = 0
    for path in paths:
        path = Path(path)
        marker = _MS2_MARKERS.get(spectrum_suffix(path))
        if marker is None or _is_gzip(path) or not path.is_file():
            return None
        tail = b""
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                data = tail + chunk
                total += data.count(marker)
                tail = data[-(len(marker) - 1) :]  # a marker cut by the chunk edge
    return total


def _is_gzip(path: Path) -> bool:
    return path.suffix.lower() == ".gz"


def _open_binary(path: Path) -> IO[bytes]:
    """The file's bytes, decompressed when it is gzipped (``.gz``)."""
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


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
    # utf-8-sig drops a leading byte-order mark, which would hide the first
    # BEGIN IONS (and shift every index by one).
    opened = _open_binary(path)
    with io.TextIOWrapper(opened, encoding="utf-8-sig", errors="replace") as handle:
        for line_number, line in enumerate(_lines(path, handle), start=1):
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


def _lines(path: Path, handle: IO[str]) -> Iterator[str]:
    """The lines of a text file; a broken gzip stream is an InputError."""
    try:
        yield from handle
    except (OSError, EOFError) as error:  # gzip.BadGzipFile is an OSError
        raise InputError(f"{path}: cannot read the file ({error})") from error


def _block_param(block: list[str], key: str) -> str | None:
    """Return the value of `KEY=` in an MGF block as written (None if absent)."""
    prefix = key.upper() + "="
    for line in block:
        if line.lstrip().upper().startswith(prefix):
            return line.split("=", 1)[1].strip()
    return None


def _number(text: str | None) -> float | None:
    """A finite number written in a file, or None (absent, a range, text)."""
    try:
        value = float(text) if text is not None else math.nan
    except ValueError:
        return None
    return value if math.isfinite(value) else None


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
    seconds = _number(_block_param(block, "RTINSECONDS"))
    ref = SpectrumRef(str(path), index, title, retention_time=seconds)
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
    try:
        with _open_binary(path) as handle:
            head = handle.read(4096)
    except (OSError, EOFError) as error:
        raise InputError(f"{path}: cannot read the file ({error})") from error
    root = b"<mzML" if suffix == ".mzml" else b"<mzXML"
    if root not in head and b"<indexedmzML" not in head:
        kind = "mzML" if suffix == ".mzml" else "mzXML"
        raise InputError(
            f"{path}: no <{kind}> element at the start; not an {kind} file"
        )
    source: Any = _open_binary(path) if _is_gzip(path) else str(path)
    try:
        if suffix == ".mzml":
            reader = mzml.MzML(source, use_index=True, decode_binary=True)
            ids = list(reader.index["spectrum"])
        else:
            reader = mzxml.MzXML(source, use_index=True, decode_binary=True)
            ids = list(reader.index["scan"])
    except Exception as error:  # pyteomics raises many kinds
        raise InputError(f"{path}: cannot read the file ({error})") from error
    return _iterate_xml(path, reader, ids, default_charge, suffix)


def _iterate_xml(
    path: Path, reader: Any, ids: list[str], default_charge: int | None, suffix: str
) -> Iterator[Spectrum | Skipped]:
    counter = _PeakCounter()
    other_levels = 0
    yielded = 0
    with reader:
        for index, spectrum_id in enumerate(ids):
            native_id = str(spectrum_id) if suffix == ".mzml" else f"scan={spectrum_id}"
            ref = SpectrumRef(str(path), index, native_id, native_id)
            try:
                spectrum = reader.get_by_id(spectrum_id)
            except Exception as error:  # one bad spectrum, one row
                yielded += 1
                yield Skipped(ref, f"{ref}: cannot parse the spectrum ({error})")
                continue
            read = _mzml_fields if suffix == ".mzml" else _mzxml_fields
            try:
                level, precursor, charge = read(spectrum)
            except (KeyError, IndexError, TypeError, ValueError) as error:
                yielded += 1
                yield Skipped(ref, f"{ref}: cannot read the precursor ({error!r})")
                continue
            if level != 2:
                other_levels += 1
                continue
            ref = dataclasses.replace(ref, retention_time=_scan_seconds(spectrum))
            written_mz = None if precursor is None else str(precursor)
            written_charge = None if charge is None else str(charge)
            yielded += 1
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
    if not yielded:
        log.warning(
            "%s: no MS2 spectra (%d spectra in all, %d of other MS levels)%s",
            path,
            len(ids),
            other_levels,
            "" if ids else "; the file may be cut short",
        )


def _scan_seconds(spectrum: dict) -> float | None:
    """Retention time in seconds of a pyteomics mzML spectrum or mzXML scan."""
    if "retentionTime" in spectrum:  # mzXML
        value = spectrum["retentionTime"]
    else:
        scans = spectrum.get("scanList", {}).get("scan", [{}])
        value = scans[0].get("scan start time") if scans else None
    if value is None:
        return None
    unit = getattr(value, "unit_info", None)
    seconds = float(value) * (60.0 if unit in ("minute", "min") else 1.0)
    return seconds if math.isfinite(seconds) else None


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
