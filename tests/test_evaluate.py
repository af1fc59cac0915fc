import json
import math
from pathlib import Path

import numpy as np
import pytest

from peptrm import evaluate, io
from peptrm.io import Prediction, SpectrumRef

# --- all metrics of (prediction, score, label) triples ---


def test_evaluate_pairs():
    metrics = evaluate.evaluate(
        [
            ("PEPTLDE", 0.9, "PEPTIDE"),
            ("PEPTDE", 0.8, "PEPTIDE"),
            ("", math.nan, "PEPTIDE"),
            ("GAPEPTIDE", 0.7, "AGPEPTIDE"),
        ]
    )
    assert metrics["n_spectra"] == 4
    assert metrics["n_predicted"] == 3
    assert metrics["peptide_recall"] == pytest.approx(0.25)
    assert metrics["peptide_precision"] == pytest.approx(1 / 3)
    assert metrics["aa_precision"] == pytest.approx(20 / 22)
    assert metrics["aa_recall"] == pytest.approx(20 / 30)
    assert metrics["curve"]["coverage"] == [0.25, 0.5, 0.75]
    assert metrics["aupcc"] == pytest.approx(0.25 * (1 + 1 / 2 + 1 / 3))
    assert metrics["ece"] == pytest.approx((0.1 + 0.8 + 0.7) / 3)


def test_unscored_prediction_is_ranked_last():
    metrics = evaluate.evaluate([("PEPTIDE", math.nan, "PEPTIDE"), ("AG", 0.2, "GA")])
    assert metrics["curve"]["coverage"] == [0.5, 1.0]
    assert metrics["curve"]["precision"] == [0.0, 0.5]


# --- files ---

PEAKS = "101.07 100\n227.10 200\n324.16 300\n"


def _mgf_block(title: str, seq: str | None, charge: str | None = "2+") -> str:
    lines = ["BEGIN IONS", f"TITLE={title}", "PEPMASS=400.69"]
    if charge:
        lines.append(f"CHARGE={charge}")
    if seq:
        lines.append(f"SEQ={seq}")
    return "\n".join(lines) + "\n" + PEAKS + "END IONS\n"


@pytest.fixture
def labelled_mgf(tmp_path):
    path = tmp_path / "run1.mgf"
    path.write_text(
        _mgf_block("s0", "PEPTIDE")
        + _mgf_block("s1", "LESLIEK")
        + _mgf_block("s2", None)  # unlabelled
        + _mgf_block("s3", "PEPTIDEX")  # unknown residue
        + _mgf_block("s4", "AGPEPTIDE")  # no prediction row
        + _mgf_block("s5", "PEPTIDE", charge=None)  # skipped: no charge
    )
    return path


def _prediction(path, index, peptide, score, rank=1, status="ok"):
    return Prediction(
        SpectrumRef(str(path), index), peptide, score, rank=rank, status=status
    )


@pytest.fixture
def predictions(labelled_mgf):
    elsewhere = "/elsewhere/run1.mgf"  # joined by file name only
    return [
        _prediction(elsewhere, 0, "PEPTLDE", 0.9),
        _prediction(labelled_mgf, 1, "LESLIEK", 0.5),
        _prediction(labelled_mgf, 1, "AAAAAAK", 0.4, rank=2),  # not rank 1: ignored
        _prediction(labelled_mgf, 2, "PEPTIDE", 0.8),  # unlabelled spectrum
        _prediction(labelled_mgf, 3, "PEPTIDE", 0.7),  # bad label
        _prediction(labelled_mgf, 5, "", math.nan, status="skipped: no CHARGE"),
        _prediction("other.mgf", 0, "PEPTIDE", 0.6),  # matches no spectrum
    ]


def _check_run1(metrics):
    # scored: s0 (7/7, correct), s1 (7/7, correct), s4 and s5 (missed: 9 + 7)
    assert metrics["n_spectra"] == 4
    assert metrics["n_unlabelled"] == 1
    assert metrics["n_bad_label"] == 1
    assert metrics["n_no_row"] == 1
    assert metrics["n_missed"] == 2
    assert metrics["peptide_recall"] == pytest.approx(2 / 4)
    assert metrics["peptide_precision"] == pytest.approx(1.0)
    assert metrics["aa_precision"] == pytest.approx(1.0)
    assert metrics["aa_recall"] == pytest.approx(14 / 30)
    assert metrics["aupcc"] == pytest.approx(0.5)  # precision 1 up to coverage 1/2
    assert metrics["ece"] == pytest.approx((0.1 + 0.5) / 2)


def test_join_and_evaluate(labelled_mgf, predictions):
    joined, n_unjoined = evaluate.join(predictions, io.read_spectra(labelled_mgf))
    assert n_unjoined == 1
    report = evaluate.evaluate_joined(joined)
    assert list(report["files"]) == ["run1.mgf"]
    _check_run1(report["files"]["run1.mgf"])
    _check_run1(report["overall"])


def test_two_rank_one_rows_for_a_spectrum_raise(labelled_mgf):
    rows = [_prediction(labelled_mgf, 0, "PEPTIDE", 0.9)] * 2
    with pytest.raises(ValueError, match="run1.mgf, spectrum 0"):
        evaluate.join(rows, io.read_spectra(labelled_mgf))


def test_evaluate_files_from_csv(tmp_path, labelled_mgf, predictions):
    csv_path = tmp_path / "out.csv"
    io.write_csv(csv_path, predictions)
    report = evaluate.evaluate_files(csv_path, [labelled_mgf])
    assert report["n_unjoined_predictions"] == 1
    _check_run1(report["files"]["run1.mgf"])

    table = evaluate.format_table(report).splitlines()
    assert table[0].split()[:2] == ["file", "spectra"]
    assert table[1].split() == [
        "run1.mgf",
        "4",
        "0.500",
        "1.000",
        "0.500",
        "1.000",
        "0.467",
        "0.500",
    ]
    assert table[2].startswith("overall")

    json_path = tmp_path / "report.json"
    evaluate.write_report(report, json_path)
    assert json.loads(json_path.read_text())["overall"]["n_spectra"] == 4

    png_path = tmp_path / "pc.png"
    evaluate.plot_precision_coverage(report, png_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_undefined_ratios_are_dashes_and_nulls(tmp_path):
    report = evaluate.evaluate_joined(
        {"a.mgf": evaluate.Joined(pairs=[("", math.nan, "PEPTIDE")], n_missed=1)}
    )
    assert evaluate.format_table(report).splitlines()[1].split() == [
        "a.mgf",
        "1",
        "0.000",
        "-",
        "0.000",
        "-",
        "0.000",
        "0.000",
    ]
    evaluate.write_report(report, tmp_path / "r.json")
    written = json.loads((tmp_path / "r.json").read_text())
    assert written["files"]["a.mgf"]["peptide_precision"] is None
    assert np.isnan(report["files"]["a.mgf"]["ece"])


def test_evaluate_files_on_real_spectra(tmp_path, small_mgf):
    small = small_mgf  # 10 labelled MassIVE-KB spectra
    rows = [
        (0, "+42.011FMKVDGAKELPDVLERVK", 0.95),  # the label: 19/19
        (1, "GDSGVLDEQLAAK", 0.9),  # N+0.984 as D, I as L: 13/13, correct
        (3, "GDYLLADYQC+57.021K", 0.4),  # I deleted: 11/11, not correct
        (4, "", math.nan),  # skipped
        (7, "VGPSELGDASK", 0.3),  # 11/11
        (8, "VLANDVDNKR", 0.2),  # 10/10
        (9, "KDITRPGAK", 0.8),  # DK swapped: 7/9
    ]  # no rows for 2, 5, 6
    csv_path = tmp_path / "out.csv"
    io.write_csv(csv_path, [_prediction(small, i, p, s) for i, p, s in rows])
    metrics = evaluate.evaluate_files(csv_path, [small])["files"]["small.mgf"]
    assert metrics["n_spectra"] == 10
    assert (metrics["n_no_row"], metrics["n_missed"]) == (3, 4)
    assert metrics["peptide_recall"] == pytest.approx(4 / 10)
    assert metrics["peptide_precision"] == pytest.approx(4 / 6)
    assert metrics["peptide_recall_exact"] == pytest.approx(3 / 10)
    # label tokens: 19 13 7 12 16 18 21 11 10 9
    assert metrics["n_aa_true"] == 136
    assert metrics["aa_precision"] == pytest.approx(71 / 73)
    assert metrics["aa_recall"] == pytest.approx(71 / 136)
    # by score the flags run 1 1 0 0 1 1 over 10 spectra
    assert metrics["aupcc"] == pytest.approx(
        0.1 * (1 + 1 + 2 / 3 + 2 / 4 + 3 / 5 + 4 / 6)
    )
    # bins: {.95, .9} -> |1 - .925| * 2, .8 -> .8, .4 -> .4, .3 -> .7, .2 -> .8
    assert metrics["ece"] == pytest.approx((0.15 + 0.8 + 0.4 + 0.7 + 0.8) / 6)


def test_metric_functions_are_re_exported():
    # callers written before the split still reach the metrics through evaluate
    for name in evaluate.__all__:
        assert hasattr(evaluate, name), name
    assert evaluate.aa_match.__module__ == "peptrm.metrics"
    assert evaluate.BatchMatch.__module__ == "peptrm.metrics"


def test_two_labelled_files_of_one_name_join_by_path(tmp_path):
    first, second = tmp_path / "a" / "run.mgf", tmp_path / "b" / "run.mgf"
    for path, peptide in ((first, "PEPTIDE"), (second, "LESLIEK")):
        path.parent.mkdir()
        path.write_text(_mgf_block("s0", peptide))
    rows = [
        _prediction(first, 0, "PEPTIDE", 0.9),  # right for a/run.mgf only
        _prediction(second, 0, "LESLIEK", 0.8),  # right for b/run.mgf only
    ]
    spectra = [*io.read_spectra(first), *io.read_spectra(second)]
    joined, n_unjoined = evaluate.join(rows, spectra)
    assert n_unjoined == 0
    report = evaluate.evaluate_joined(joined)
    assert list(report["files"]) == ["run.mgf", str(second)]
    assert report["overall"]["peptide_recall"] == 1.0


def _keys(report):
    out = set()
    for key, value in report.items():
        out.add(key)
        if isinstance(value, dict) and key not in ("files",):
            out |= _keys(value)
    return out


def test_every_report_key_is_documented(tmp_path, labelled_mgf, predictions):
    csv_path = tmp_path / "out.csv"
    io.write_csv(csv_path, predictions)
    report = evaluate.evaluate_files(csv_path, [labelled_mgf])
    doc = (Path(__file__).parents[1] / "docs" / "file_formats.md").read_text()
    for key in _keys(report):
        assert f"`{key}`" in doc, key
