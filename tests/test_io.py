import gzip
import logging
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from pyteomics import mass, mztab

from peptrm import io, masses
from peptrm.io import InputError, Prediction, Skipped, Spectrum, SpectrumRef

DATA = Path(__file__).parent / "data"


def records(path, **kwargs):
    return list(io.read_spectra(path, **kwargs))


def line_number(path: Path, text: str) -> int:
    lines = path.read_text().splitlines()
    return lines.index(text) + 1


# ----------------------------------------------------------------------------- MGF


def test_small_mgf_values_match_the_file(small_mgf):
    spectra = records(small_mgf)
    assert [s.ref.index for s in spectra] == list(range(10))
    assert all(isinstance(s, Spectrum) for s in spectra)
    first = spectra[0]
    assert first.ref == SpectrumRef(str(small_mgf), 0, "massive_hcd_167")
    assert first.precursor_mz == 529.793519
    assert first.charge == 4
    assert first.peptide == "+42.011FMKVDGAKELPDVLERVK"
    assert first.label_problem is None
    assert len(first.mz) == 87  # peak lines between CHARGE/SEQ and END IONS
    assert first.mz[0] == 101.07133
    assert first.intensity[0] == pytest.approx(886.4)
    assert first.mz.dtype == np.float64
    assert first.intensity.dtype == np.float32
    assert np.all(np.diff(first.mz) > 0)


def test_small_mgf_precursors_agree_with_pyteomics_peptide_masses(small_mgf):
    # PEPMASS and SEQ are independent in the file; the neutral mass from one must
    # match pyteomics' mass of the other (within the 20 ppm PRECURSOR_CHECK).
    spectrum = records(small_mgf)[2]
    assert spectrum.peptide == "LLPAFLK"
    expected = mass.calculate_mass(sequence="LLPAFLK")  # 800.5193 Da
    observed = masses.mz_to_mass(spectrum.precursor_mz, spectrum.charge)
    assert abs(masses.ppm_error(observed, expected)) < 20


def test_broken_mgf_gives_one_record_per_spectrum(broken_mgf):
    out = records(broken_mgf)
    assert [r.ref.index for r in out] == list(range(10))
    kinds = {r.ref.title: type(r).__name__ for r in out}
    assert kinds == {
        "good": "Spectrum",
        "no_charge": "Skipped",
        "zero_pepmass": "Skipped",
        "empty": "Skipped",
        "one_peak": "Spectrum",  # preprocessing's min_peaks skips it
        "letter": "Skipped",
        "nan": "Spectrum",
        "unknown_residue": "Spectrum",  # can still be sequenced
        "absurd_charge": "Skipped",
        "truncated": "Skipped",
    }


def test_broken_mgf_messages_name_file_spectrum_and_value(broken_mgf):
    out = {r.ref.title: r for r in records(broken_mgf)}
    assert out["no_charge"].reason == (
        "broken.mgf, spectrum 1 (TITLE=no_charge): no CHARGE line; "
        "pass --default-charge or fix the file"
    )
    assert out["zero_pepmass"].reason == (
        "broken.mgf, spectrum 2 (TITLE=zero_pepmass): PEPMASS '0' is not a "
        "positive m/z; fix the file"
    )
    assert out["empty"].reason == "broken.mgf, spectrum 3 (TITLE=empty): no peaks"
    bad_line = line_number(broken_mgf, "129.10527 12O5")
    assert out["letter"].reason == (
        f"broken.mgf, spectrum 5 (TITLE=letter): line {bad_line} '129.10527 12O5' "
        "is not an m/z and an intensity"
    )
    assert out["absurd_charge"].reason == (
        "broken.mgf, spectrum 8 (TITLE=absurd_charge): CHARGE '50+' is not one "
        "charge from 1 to 10; pass --default-charge or fix the file"
    )
    assert out["truncated"].reason.startswith(
        "broken.mgf, spectrum 9 (TITLE=truncated): no END IONS before the end of "
        "the file"
    )
    assert out["unknown_residue"].label_problem.startswith(
        "broken.mgf, spectrum 7 (TITLE=unknown_residue): SEQ 'PEPTIDEX' has "
        "unknown residue 'X'"
    )
    assert out["unknown_residue"].peptide == "PEPTIDEX"


def test_skipped_spectra_keep_what_was_readable(broken_mgf):
    out = {r.ref.title: r for r in records(broken_mgf)}
    assert out["no_charge"].precursor_mz == 401.267087
    assert out["no_charge"].charge is None
    assert out["no_charge"].peptide == "LLPAFLK"
    assert out["zero_pepmass"].precursor_mz is None
    assert out["zero_pepmass"].charge == 2


def test_nan_peak_is_dropped_and_counted(broken_mgf, caplog):
    with caplog.at_level(logging.WARNING, logger="peptrm.io"):
        out = {r.ref.title: r for r in records(broken_mgf)}
    good, nan = out["good"], out["nan"]
    assert 130.08926 not in nan.mz  # the peak whose intensity is nan
    np.testing.assert_array_equal(nan.mz, good.mz)
    assert "broken.mgf: dropped 1 peaks" in caplog.text
    assert "(first: 6)" in caplog.text


def test_default_charge_stands_in_for_missing_and_absurd(broken_mgf):
    out = {r.ref.title: r for r in records(broken_mgf, default_charge=3)}
    assert isinstance(out["no_charge"], Spectrum)
    assert out["no_charge"].charge == 3
    assert out["absurd_charge"].charge == 3
    assert out["good"].charge == 2  # a valid CHARGE line wins


def test_block_without_end_ions_before_next_block(tmp_path, small_mgf):
    lines = small_mgf.read_text().splitlines()
    first_end = lines.index("END IONS")
    path = tmp_path / "cut.mgf"
    path.write_text("\n".join(lines[:first_end] + lines[first_end + 1 :]) + "\n")
    out = records(path)
    assert len(out) == 10
    assert isinstance(out[0], Skipped)
    assert out[0].reason == (
        "cut.mgf, spectrum 0 (TITLE=massive_hcd_167): no END IONS before the next "
        f"BEGIN IONS at line {first_end + 1}; the spectrum may be cut short"
    )
    assert out[1].ref.index == 1
    assert out[1].ref.title == "massive_hcd_4813"


def test_several_charges_are_ambiguous(tmp_path):
    path = tmp_path / "two.mgf"
    peaks = "\n".join(f"{100 + i}.5 {10 * i + 1}" for i in range(6))
    path.write_text(
        f"BEGIN IONS\nTITLE=t\nPEPMASS=500.2\nCHARGE=2+ and 3+\n{peaks}\nEND IONS\n"
    )
    (out,) = records(path)
    assert out.reason == (
        "two.mgf, spectrum 0 (TITLE=t): CHARGE '2+ and 3+' is not one charge "
        "from 1 to 10; pass --default-charge or fix the file"
    )


def test_extension_is_case_insensitive(tmp_path, small_mgf):
    path = tmp_path / "SMALL.MGF"
    shutil.copy(small_mgf, path)
    assert len(records(path)) == 10


def test_read_labelled_skips_unusable_labels(broken_mgf):
    out = list(io.read_labelled([broken_mgf]))
    assert len(out) == 10
    by_title = {r.ref.title: r for r in out}
    assert isinstance(by_title["good"], Spectrum)
    assert by_title["unknown_residue"].reason.startswith(
        "broken.mgf, spectrum 7 (TITLE=unknown_residue): SEQ 'PEPTIDEX'"
    )
    assert by_title["nan"].reason == (
        "broken.mgf, spectrum 6 (TITLE=nan): no SEQ= annotation"
    )


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("junk.mgf", b"\x89PNG\r\n\x1a\n\x00\x00binary", "binary data at line 3"),
        ("words.mgf", b"hello\nworld\n", "no BEGIN IONS line; not an MGF file"),
        ("junk.mzML", b"\x00\x01\x02 not xml", "not an mzML file"),
        ("junk.mzXML", b"<html></html>", "not an mzXML file"),
        ("notes.txt", b"BEGIN IONS\n", "unknown extension '.txt'"),
    ],
)
def test_unreadable_files_raise_input_error(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=message) as error:
        records(path)
    assert str(error.value).startswith(str(path))


def test_missing_file_raises_input_error(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        io.read_spectra(tmp_path / "absent.mgf")
    with pytest.raises(InputError, match="is a directory, not a spectrum file"):
        io.read_spectra(tmp_path)


def test_a_byte_order_mark_loses_no_spectrum():
    out = records(DATA / "bom.mgf")
    assert (DATA / "bom.mgf").read_bytes()[:3] == b"\xef\xbb\xbf"
    assert [r.ref.index for r in out] == [0, 1, 2]  # 3 BEGIN IONS in the file
    assert out[0].ref.title.endswith("scan=2")
    assert out[0].ref.retention_time == 1443.664  # RTINSECONDS=1443.664
    assert out[0].peptide == "RGNVC+57.021GDAK"


@pytest.mark.parametrize("name", ["small.mgf", "small.mzML", "small.mzXML"])
def test_gzipped_inputs_read_like_the_plain_file(tmp_path, name):
    gzipped = tmp_path / (name + ".gz")
    gzipped.write_bytes(gzip.compress((DATA / name).read_bytes()))
    plain, packed = records(DATA / name), records(gzipped)
    assert [r.ref.index for r in packed] == [r.ref.index for r in plain]
    assert [r.ref.title for r in packed] == [r.ref.title for r in plain]
    for a, b in zip(plain, packed, strict=True):
        np.testing.assert_array_equal(a.mz, b.mz)
        assert a.precursor_mz == b.precursor_mz


def test_a_broken_gzip_is_an_input_error(tmp_path):
    path = tmp_path / "fake.mgf.gz"
    path.write_bytes(b"BEGIN IONS\n")  # not gzip at all
    with pytest.raises(InputError, match="fake.mgf.gz: cannot read the file"):
        records(path)


@pytest.mark.parametrize("name", ["ms1_only.mzML", "cut_early.mzML"])
def test_mzml_without_ms2_spectra_warns(caplog, name):
    with caplog.at_level("WARNING"):
        assert records(DATA / name) == []
    (message,) = [r.getMessage() for r in caplog.records]
    assert name in message and "no MS2 spectra" in message


def test_spectrum_files_of_a_folder_are_sorted(tmp_path):
    for name in ("b.mzML", "a.mgf", "c.mgf.gz", "notes.txt", "d.MZXML"):
        (tmp_path / name).write_text("")
    (tmp_path / "sub.mgf").mkdir()
    found = [p.name for p in io.spectrum_files(tmp_path)]
    assert found == ["a.mgf", "b.mzML", "c.mgf.gz", "d.MZXML"]


# --------------------------------------------------------------------- mzML, mzXML


def test_mzml_yields_ms2_only_with_file_positions(small_mzml):
    out = records(small_mzml)
    assert [s.ref.index for s in out] == [1, 2, 3, 4]  # index 0 is MS1
    first = out[0]
    assert first.ref.title == "controllerType=0 controllerNumber=1 scan=2"
    assert str(first.ref) == (
        "small.mzML, spectrum 1 (TITLE=controllerType=0 controllerNumber=1 scan=2)"
    )
    assert first.precursor_mz == 488.73
    assert first.charge == 2
    assert len(first.mz) == 206  # defaultArrayLength in the file
    assert first.peptide is None
    assert first.ref.native_id == first.ref.title  # the mzML spectrum id
    # scan start time 24.0610716666667 minutes in the file
    assert first.ref.retention_time == pytest.approx(24.0610716666667 * 60)


def test_mzxml_matches_the_same_spectra_as_mzml(small_mzml, small_mzxml):
    from_mzml = records(small_mzml)
    from_mzxml = records(small_mzxml)
    assert [s.ref.index for s in from_mzxml] == [1, 2, 3, 4]
    assert from_mzxml[0].ref.title == "scan=2"
    for a, b in zip(from_mzml, from_mzxml, strict=True):
        assert a.precursor_mz == b.precursor_mz
        assert a.charge == b.charge
        np.testing.assert_allclose(a.mz, b.mz, rtol=1e-7)  # mzXML peaks are 32-bit
        np.testing.assert_allclose(a.intensity, b.intensity, rtol=1e-6)


def test_truncated_mzml_loses_only_the_cut_spectrum(truncated_mzml):
    out = records(truncated_mzml)
    assert [r.ref.index for r in out] == [1, 2, 3, 4]
    assert all(isinstance(r, Spectrum) for r in out[:3])
    assert isinstance(out[3], Skipped)
    assert out[3].reason.startswith(
        "truncated.mzML, spectrum 4 (TITLE=controllerType=0 controllerNumber=1 "
        "scan=5): cannot parse the spectrum"
    )


# ---------------------------------------------------------------- shared data set


@pytest.mark.parametrize(
    ("name", "count"), [("qeplus2_dev.mgf", 877), ("massivekb_dev.mgf", 488)]
)
def test_shared_dev_mgf_read_without_loss(shared_data, name, count):
    out = records(shared_data / "dev" / name)
    assert len(out) == count  # counts from shared/data/README.md
    assert [r.ref.index for r in out] == list(range(count))
    assert all(isinstance(r, Spectrum) and r.label_problem is None for r in out)


def test_shared_mzml_read_without_loss(shared_data):
    from pyteomics import mzml

    path = shared_data / "raw" / "SmallCalibratibleYeast.mzml"
    with mzml.MzML(str(path)) as reader:
        ms2 = [s["index"] for s in reader if s["ms level"] == 2]
    out = records(path)
    assert len(ms2) == 118
    assert [r.ref.index for r in out] == ms2
    assert all(isinstance(r, Spectrum) for r in out)


# ------------------------------------------------------------------------ writers


def predictions_for(path: Path) -> list[Prediction]:
    out = []
    for spectrum in io.read_spectra(path):
        peptide = spectrum.peptide
        calc = masses.precursor_mz(peptide, spectrum.charge)
        n_tokens = len(masses.parse(peptide))
        out.append(
            Prediction(
                ref=spectrum.ref,
                peptide=peptide,
                score=0.5 + spectrum.ref.index / 100,
                aa_scores=[round(0.9 - i / 100, 5) for i in range(n_tokens)],
                charge=spectrum.charge,
                precursor_mz=spectrum.precursor_mz,
                calc_mz=calc,
                mass_error_ppm=masses.ppm_error(spectrum.precursor_mz, calc),
                isotope=0,
                n_steps=3,
            )
        )
    skipped = Prediction(
        ref=SpectrumRef(str(path), 10, "gone"),
        peptide="",
        score=math.nan,
        charge=2,
        precursor_mz=401.267087,
        status="skipped: small.mgf, spectrum 10 (TITLE=gone): no peaks",
    )
    return [*out, skipped]


def assert_same_predictions(read: list[Prediction], written: list[Prediction]):
    assert len(read) == len(written)
    for a, b in zip(read, written, strict=True):
        assert Path(a.ref.path).name == Path(b.ref.path).name
        assert (a.ref.index, a.ref.title) == (b.ref.index, b.ref.title)
        assert a.peptide == b.peptide
        assert a.aa_scores == pytest.approx(b.aa_scores, abs=1e-5)
        assert a.charge == b.charge
        assert a.status == b.status
        assert a.rank == b.rank
        for field in ("score", "precursor_mz", "calc_mz", "mass_error_ppm"):
            x, y = getattr(a, field), getattr(b, field)
            if y is None or math.isnan(y):
                assert x is None or math.isnan(x)
            else:
                assert x == pytest.approx(y, abs=1e-3)


def test_mztab_round_trip(tmp_path, small_mgf):
    written = predictions_for(small_mgf)
    path = tmp_path / "out.mztab"
    io.write_mztab(path, written, [str(small_mgf)], "0.1.0", {"decoding": {"top_k": 1}})
    read = io.read_predictions(path)
    assert_same_predictions(read, written)
    assert read[0].ref.path == str(small_mgf.resolve())  # ms_run location resolved


def test_mztab_rows_follow_the_spec(tmp_path, small_mgf):
    written = predictions_for(small_mgf)
    path = tmp_path / "out.mztab"
    io.write_mztab(path, written, [str(small_mgf)], "0.1.0")
    lines = path.read_text().splitlines()
    assert "MTD\tmzTab-version\t1.0.0" in lines
    assert f"MTD\tms_run[1]-location\t{small_mgf.resolve().as_uri()}" in lines
    assert "MTD\tfixed_mod[1]\t[UNIMOD, UNIMOD:4, Carbamidomethyl, ]" in lines
    header = next(line for line in lines if line.startswith("PSH")).split("\t")
    rows = [line.split("\t") for line in lines if line.startswith("PSM")]
    first = dict(zip(header, rows[0], strict=True))
    assert first["sequence"] == "FMKVDGAKELPDVLERVK"
    assert first["modifications"] == "0-UNIMOD:1"
    assert first["spectra_ref"] == "ms_run[1]:index=0"
    assert first["charge"] == "4"
    assert first["exp_mass_to_charge"] == "529.793519"
    assert first["opt_ms_run[1]_proforma"] == "[Acetyl]-FMKVDGAKELPDVLERVK"
    last = dict(zip(header, rows[-1], strict=True))
    assert last["sequence"] == "null"
    assert first["retention_time"] == "null"  # massive-KB MGF has no RTINSECONDS
    assert last["search_engine_score[1]"] == "null"
    assert last["opt_ms_run[1]_status"].startswith("skipped: small.mgf, spectrum 10")


def test_mztab_rows_of_mzml_carry_native_id_and_retention_time(tmp_path, small_mzml):
    spectra = records(small_mzml)
    written = [
        Prediction(s.ref, "PEPTIDE", 0.5, [0.5] * 7, s.charge, s.precursor_mz)
        for s in spectra
    ]
    path = tmp_path / "out.mztab"
    io.write_mztab(path, written, [str(small_mzml)], "0.1.0")
    lines = path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("PSH")).split("\t")
    row = next(line for line in lines if line.startswith("PSM")).split("\t")
    first = dict(zip(header, row, strict=True))
    assert (
        first["spectra_ref"] == "ms_run[1]:controllerType=0 controllerNumber=1 scan=2"
    )
    assert first["retention_time"] == "1443.664"  # 24.0610716666667 min
    assert first["opt_ms_run[1]_spectrum_index"] == "1"
    read = io.read_predictions(path)
    assert [r.ref.index for r in read] == [1, 2, 3, 4]
    assert read[0].ref.native_id == "controllerType=0 controllerNumber=1 scan=2"
    assert read[0].ref.retention_time == pytest.approx(1443.664)


def test_pyteomics_reads_our_mztab(tmp_path, small_mgf):
    written = predictions_for(small_mgf)
    path = tmp_path / "out.mztab"
    io.write_mztab(path, written, [str(small_mgf)], "0.1.0")
    table = mztab.MzTab(str(path))
    assert table.version == "1.0.0"
    assert table.mode == "Summary"
    assert table.type == "Identification"
    psms = table.spectrum_match_table
    assert len(psms) == 11
    assert list(psms["sequence"][:3]) == [
        "FMKVDGAKELPDVLERVK",
        "GDSGVLNEQIAAK",
        "LLPAFLK",
    ]


def test_csv_round_trip(tmp_path, small_mgf):
    written = predictions_for(small_mgf)
    path = tmp_path / "out.csv"
    io.write_csv(path, written)
    header = path.read_text().splitlines()[0]
    assert header == ",".join(io.CSV_COLUMNS)
    read = io.read_predictions(path)
    assert_same_predictions(read, written)
    assert read[0].ref.path == str(small_mgf)


def test_mztab_rejects_a_prediction_from_an_unlisted_file(tmp_path, small_mgf):
    written = predictions_for(small_mgf)
    with pytest.raises(ValueError, match="is not among ms_runs"):
        io.write_mztab(tmp_path / "out.mztab", written, ["other.mgf"], "0.1.0")


def test_read_predictions_rejects_other_files(tmp_path):
    path = tmp_path / "other.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match="other.csv: not a PepTRM mzTab or CSV"):
        io.read_predictions(path)


# --- where results may be written ---


@pytest.mark.parametrize(
    "name, message",
    [
        ("v.mgf", "looks like a spectrum file"),
        ("v.mzML", "looks like a spectrum file"),
        ("v.MZXML", "looks like a spectrum file"),
        ("v.mgf.gz", "looks like a spectrum file"),
        ("v.txt", r"unknown output extension '.txt' \(use .mztab or .csv\)"),
        ("v", "unknown output extension ''"),
        ("nofolder/v.mztab", "folder .*nofolder does not exist"),
    ],
)
def test_output_paths_that_are_refused(tmp_path, name, message):
    with pytest.raises(io.InputError, match=message):
        io.check_output_path(tmp_path / name, [])


def test_an_input_is_never_an_output(tmp_path, small_mgf):
    copy = tmp_path / "v.mztab"  # even with a results extension
    copy.write_text(small_mgf.read_text())
    with pytest.raises(io.InputError, match="is an input file"):
        io.check_output_path(copy, [copy])
    with pytest.raises(io.InputError, match="is a directory"):
        io.check_output_path(tmp_path, [])
    io.check_output_path(tmp_path / "v.mgf.mztab", [small_mgf])  # named after one


def test_replace_when_done_leaves_nothing_after_a_failure(tmp_path):
    out = tmp_path / "out.mztab"
    out.write_text("old results\n")
    with pytest.raises(KeyboardInterrupt):
        with io.replace_when_done(out) as path:
            path.write_text("half a file")
            raise KeyboardInterrupt
    assert out.read_text() == "old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mztab"]
    with io.replace_when_done(out) as path:
        assert path != out and path.parent == out.parent
        path.write_text("new results\n")
    assert out.read_text() == "new results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mztab"]


def test_a_fifo_is_written_to_not_replaced(tmp_path):
    import os
    import stat
    import threading

    fifo = tmp_path / "pipe.mztab"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(
        target=lambda: received.append(fifo.read_text()), daemon=True
    )
    reader.start()
    io.check_output_path(fifo, [])  # accepted whatever its name
    with io.replace_when_done(fifo) as path:
        assert path == fifo
        path.write_text("rows\n")
    reader.join(timeout=10)
    assert received == ["rows\n"]
    assert stat.S_ISFIFO(fifo.stat().st_mode)


@pytest.mark.parametrize("chunk_size", [7, 1 << 24])  # 7 cuts markers in two
def test_estimate_spectra_counts_ms2_spectra_from_bytes(
    tmp_path, chunk_size, small_mgf, small_mzml, small_mzxml
):
    files = [small_mgf, small_mzml, small_mzxml]
    assert io.estimate_spectra(files, chunk_size) == 10 + 4 + 4  # MS1 not counted
    gzipped = tmp_path / "small.mgf.gz"
    gzipped.write_bytes(gzip.compress(small_mgf.read_bytes()))
    assert io.estimate_spectra([small_mgf, gzipped], chunk_size) is None


def test_every_output_column_is_documented():
    doc = (Path(__file__).parents[1] / "docs" / "file_formats.md").read_text()
    for column in (*io.PSM_COLUMNS, *io.CSV_COLUMNS):
        assert f"| `{column}` |" in doc, column


def test_read_predictions_says_a_directory_is_one(tmp_path):
    with pytest.raises(InputError, match="is a directory, not a results file"):
        io.read_predictions(tmp_path)
