"""Predictions to mzTab 1.0 and CSV, and back again with `read_predictions`."""

from __future__ import annotations

import contextlib
import csv
import math
import os
import stat
import tempfile
import urllib.parse
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from peptrm import masses
from peptrm.io.readers import SPECTRUM_SUFFIXES, spectrum_suffix
from peptrm.io.records import InputError, Prediction, SpectrumRef

NULL = "null"  # mzTab 1.0's missing value (section 5.5)
OUTPUT_SUFFIXES = (".mztab", ".csv")  # what `peptrm sequence -o` can write

CSV_COLUMNS = (
    "file",
    "index",
    "title",
    "retention_time",
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
    "q_value",
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
            "spectrum_index",
            "mass_error_ppm",
            "isotope",
            "n_steps",
            "q_value",
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
    ((accession_c, name_c),) = masses.UNIMOD["C+57.021"]
    lines += [
        ("fixed_mod[1]", f"[UNIMOD, UNIMOD:{accession_c}, {name_c}, ]"),
        ("fixed_mod[1]-site", "C"),
    ]
    for i, (accession, name, site) in enumerate(_variable_modifications(), start=1):
        lines.append((f"variable_mod[{i}]", f"[UNIMOD, UNIMOD:{accession}, {name}, ]"))
        lines.append((f"variable_mod[{i}]-site", site))
        if site == "N-term":
            lines.append((f"variable_mod[{i}]-position", "Any N-term"))
    for i, run in enumerate(ms_runs, start=1):
        lines.append((f"ms_run[{i}]-location", Path(run).resolve().as_uri()))
    return lines


def _variable_modifications() -> list[tuple[int, str, str]]:
    """(accession, name, site) of each variable Unimod modification, once each."""
    out: list[tuple[int, str, str]] = []
    for label, entries in masses.UNIMOD.items():
        if label == "C+57.021":
            continue
        site = "N-term" if label in masses.N_TERMINAL_MODIFICATIONS else label[0]
        for accession, name in entries:
            if (accession, name, site) not in out:
                out.append((accession, name, site))
    return out


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
        _number(ref.retention_time, 3),
        _integer(prediction.charge),
        _number(prediction.precursor_mz, 6),
        _number(prediction.calc_mz, 6),
        f"ms_run[{run}]:{_clean(ref.native_id) or f'index={ref.index}'}",
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
        str(ref.index),
        _number(prediction.mass_error_ppm, 3),
        _integer(prediction.isotope),
        _integer(prediction.n_steps),
        _number(prediction.q_value, 6),
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
                    _number(p.ref.retention_time, 3, ""),
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
                    _number(p.q_value, 6, ""),
                ]
            )


def check_output_path(output: str | Path, inputs: Iterable[str | Path]) -> None:
    """Refuse an output that would replace an input or is not .mztab / .csv.

    Writing mzTab over ``v.mgf`` destroys the spectra; so would a typo such as
    ``-o v.mgf`` for a second file. An existing non-regular file (a FIFO,
    /dev/stdout) is accepted whatever its name: it is written to, not replaced.

    Raises
    ------
    InputError
        Naming the output and what is wrong with it.
    """
    output = Path(output)
    if output.is_dir():
        raise InputError(f"{output}: is a directory; give a .mztab or .csv file")
    if output.exists() and not output.is_file():
        return  # a device or FIFO: written to directly
    if not output.parent.is_dir():
        raise InputError(f"{output}: folder {output.parent} does not exist")
    for path in inputs:
        if output.exists() and Path(path).exists() and output.samefile(path):
            raise InputError(f"{output}: is an input file; refusing to overwrite it")
    if spectrum_suffix(output) in SPECTRUM_SUFFIXES:
        raise InputError(
            f"{output}: looks like a spectrum file; refusing to write results over "
            f"it (use {' or '.join(OUTPUT_SUFFIXES)})"
        )
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            f"{output}: unknown output extension {output.suffix!r} (use "
            f"{' or '.join(OUTPUT_SUFFIXES)})"
        )


@contextlib.contextmanager
def replace_when_done(output: str | Path) -> Iterator[Path]:
    """Yield a path to write; it becomes `output` only when the block succeeds.

    The file is written beside `output` under a unique temporary name and moved
    over it with `os.replace` (atomic on one file system), so a failed or
    interrupted run leaves no partial file and two runs at once never mix their
    rows. A non-regular `output` (a FIFO, /dev/stdout) is written directly: it
    must not be replaced by a regular file.
    """
    output = Path(output)
    if output.exists() and not stat.S_ISREG(output.stat().st_mode):
        yield output
        return
    handle, name = tempfile.mkstemp(
        prefix=f".{output.name}.", suffix=".tmp", dir=output.parent or "."
    )
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temporary, 0o666 & ~umask)  # mkstemp makes 0600: use the umask
        os.replace(temporary, output)
    finally:
        temporary.unlink(missing_ok=True)


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
        q_value=_float(row[names["q_value"]]) if names["q_value"] in row else None,
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
    "q_value": _OPT + "q_value",
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
    if path.is_dir():
        raise InputError(f"{path}: is a directory, not a results file")
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    with open(path, newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if first.startswith("MTD\t"):
            return _read_mztab(path, handle)
        reader = csv.DictReader(handle)
        optional = {"q_value"}  # files written before q-values existed lack it
        missing = set(CSV_COLUMNS) - optional - set(reader.fieldnames or [])
        if missing:
            raise InputError(
                f"{path}: not a PepTRM mzTab or CSV (missing columns {sorted(missing)})"
            )
        out = []
        for row in reader:
            ref = SpectrumRef(
                row["file"],
                int(row["index"]),
                row["title"],
                retention_time=_float(row["retention_time"]),
            )
            out.append(_prediction(ref, row, _CSV_NAMES))
        return out


def _uri_to_path(uri: str) -> str:
    """Turn an mzTab ``file://`` location into a local path (other text as is)."""
    parsed = urllib.parse.urlparse(uri)
    if parsed.scheme != "file":
        return uri
    return urllib.parse.unquote(parsed.path)


def _mztab_ref(row: dict[str, str], runs: dict[str, str]) -> SpectrumRef:
    """The SpectrumRef of a PSM row: its run, index, title, native ID and time.

    ``spectra_ref`` is ``ms_run[N]:index=i`` for MGF and ``ms_run[N]:<native
    ID>`` for mzML/mzXML, whose index is then in ``opt_ms_run[1]_spectrum_index``.
    """
    run, _, spectrum = row["spectra_ref"].partition(":")
    title = row.get(_OPT + "title", NULL)
    if spectrum.startswith("index="):
        index, native_id = int(spectrum.removeprefix("index=")), ""
    else:
        index, native_id = int(row[_OPT + "spectrum_index"]), spectrum
    return SpectrumRef(
        runs[run],
        index,
        "" if title == NULL else title,
        native_id,
        _float(row.get("retention_time", NULL)),
    )


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
                ref = _mztab_ref(row, runs)
                out.append(_prediction(ref, row, _MZTAB_NAMES))
            except (KeyError, ValueError) as error:
                raise InputError(
                    f"{path}, line {line_number}: bad PSM row ({error!r})"
                ) from error
    return out
