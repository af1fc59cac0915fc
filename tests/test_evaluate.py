import json
import math

import numpy as np
import pytest

from peptrm import evaluate, io
from peptrm.io import Prediction, SpectrumRef

T, F = True, False


# --- residue matching (expected values worked out by hand from residue masses) ---


def test_i_and_l_match_everywhere():
    matches, correct = evaluate.aa_match("PEPTLDE", "PEPTIDE")
    assert matches.tolist() == [T] * 7
    assert correct
    assert evaluate.same_peptide("PEPTLDE", "PEPTIDE")


def test_n_terminal_swap_of_equal_sum():
    # G (57.02) then A (71.04) against A then G. From the N-term, pred G is lighter
    # than true A, so it is left unaligned; pred A then aligns with true G at equal
    # prefix mass (128.06) and mismatches; PEPTIDE matches. From the C-term nothing
    # is left after the last N-terminal match. Casanovo's matcher also gives 7/9.
    matches, correct = evaluate.aa_match("GAPEPTIDE", "AGPEPTIDE")
    assert matches.tolist() == [F, F, T, T, T, T, T, T, T]
    assert not correct


def test_middle_and_c_terminal_swaps():
    matches, _ = evaluate.aa_match("PEPGATIDE", "PEPAGTIDE")
    assert matches.tolist() == [T, T, T, F, F, T, T, T, T]
    # At the C-term the N-terminal pass matches PEPTIDE and the C-terminal pass
    # aligns pred G with true A at equal suffix mass: both swapped residues miss.
    matches, _ = evaluate.aa_match("PEPTIDEGA", "PEPTIDEAG")
    assert matches.tolist() == [T, T, T, T, T, T, T, F, F]


def test_k_and_q_match_at_a_tenth_of_a_dalton():
    # K 128.09496 vs Q 128.05858: 0.036 Da apart, so by the Casanovo convention the
    # peptide is correct; only the exact string comparison tells them apart.
    matches, correct = evaluate.aa_match("PEPKIDE", "PEPQLDE")
    assert matches.all() and correct
    assert not evaluate.same_peptide("PEPKIDE", "PEPQLDE")
    matches, correct = evaluate.aa_match("PEPKIDE", "PEPQLDE", tol_da=0.01)
    assert matches.tolist() == [T, T, T, F, T, T, T]
    assert not correct


def test_substitution_of_different_mass_costs_one_residue():
    # F 147.068 vs M 131.040: the N-terminal pass matches PEPT, then the prefix
    # masses stay 16 Da apart; the C-terminal pass matches E and D.
    matches, correct = evaluate.aa_match("PEPTFDE", "PEPTMDE")
    assert matches.tolist() == [T, T, T, T, F, T, T]
    assert not correct


def test_deleted_residue():
    matches, correct = evaluate.aa_match("PEPTDE", "PEPTIDE")
    assert matches.tolist() == [T] * 6  # every predicted residue is right
    assert not correct  # but one true residue is missing


def test_deletion_after_a_coincidental_alignment():
    # The label has an extra I. From the N-term, pred Y L aligns with true I Y
    # (Y + L = I + Y in mass) and pred L with true L, then the masses part for
    # good. From the C-term everything from pred Y on matches. The best split
    # (G D from the N-term, the rest from the C-term) matches every predicted
    # residue; stopping the C-terminal pass at the last N-terminal match would
    # lose Y and L.
    matches, correct = evaluate.aa_match("GDYLLADYQC+57.021K", "GDIYLLADYQC+57.021K")
    assert matches.tolist() == [T] * 11
    assert not correct


def test_first_residue_missing():
    # pred is the label without its first S; from the N-term A+S aligns with S+A
    matches, _ = evaluate.aa_match(
        "ASSDTSEELNSQ+0.984DSPPK", "SASSDTSEELNSQ+0.984DSPPK"
    )
    assert matches.tolist() == [T] * 17


def test_n_terminal_modification_is_its_own_token():
    matches, correct = evaluate.aa_match("+42.011PEPTIDE", "PEPTIDE")
    assert matches.tolist() == [F] + [T] * 7
    assert not correct
    matches, correct = evaluate.aa_match("PEPTIDE", "+42.011PEPTIDE")
    assert matches.tolist() == [T] * 7
    assert not correct
    # acetyl 42.0106 vs carbamyl 43.0058: 0.995 Da apart, never aligned
    matches, _ = evaluate.aa_match("+43.006PEPTIDE", "+42.011PEPTIDE")
    assert matches.tolist() == [F] + [T] * 7
    assert evaluate.aa_match("+42.011PEPTLDE", "+42.011PEPTIDE")[1]


def test_mass_equal_modified_residues_match():
    # N+0.984 is D by composition; M+15.995 (147.0354) vs F (147.0684) is 0.033 Da
    assert evaluate.aa_match("PEPTN+0.984E", "PEPTDE")[1]
    assert evaluate.aa_match("M+15.995K", "FK")[1]


def test_empty_prediction_matches_nothing():
    matches, correct = evaluate.aa_match("", "PEPTIDE")
    assert matches.shape == (0,)
    assert not correct


def test_batch_counts_and_ratios():
    batch = evaluate.aa_match_batch(
        ["PEPTLDE", "PEPTDE", "", "GAPEPTIDE"],
        ["PEPTIDE", "PEPTIDE", "PEPTIDE", "AGPEPTIDE"],
    )
    assert (batch.n_aa_matched, batch.n_aa_predicted, batch.n_aa_true) == (20, 22, 30)
    assert batch.aa_precision == pytest.approx(20 / 22)
    assert batch.aa_recall == pytest.approx(20 / 30)
    assert batch.peptide_recall == pytest.approx(1 / 4)  # the empty one counts
    assert batch.peptide_precision == pytest.approx(1 / 3)  # the empty one does not
    assert batch.correct.tolist() == [T, F, F, F]


def test_batch_of_nothing_predicted_is_undefined_not_zero():
    batch = evaluate.aa_match_batch([""], ["PEPTIDE"])
    assert math.isnan(batch.aa_precision)
    assert math.isnan(batch.peptide_precision)
    assert batch.aa_recall == 0.0


# --- precision-coverage and calibration ---


def test_precision_coverage_ranks_by_score():
    # in score order 0.9 0.8 0.7 0.6 the flags are 1 0 1 1
    coverage, precision = evaluate.precision_coverage(
        [0.6, 0.9, 0.7, 0.8], [True, True, True, False]
    )
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert precision == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4])
    area = evaluate.area_under_precision_coverage(coverage, precision)
    assert area == pytest.approx((1 + 1 / 2 + 2 / 3 + 3 / 4) / 4)  # 0.729167


def test_precision_coverage_ties_and_missing_predictions():
    # the tie at 0.9 gives one point; the nan spectrum is never covered
    coverage, precision = evaluate.precision_coverage(
        [0.9, 0.9, 0.5, math.nan], [True, False, True, False]
    )
    assert coverage.tolist() == [0.5, 0.75]
    assert precision == pytest.approx([1 / 2, 2 / 3])
    area = evaluate.area_under_precision_coverage(coverage, precision)
    assert area == pytest.approx(0.5 * 1 / 2 + 0.25 * 2 / 3)


def test_expected_calibration_error():
    scores = [0.95, 0.85, 0.15, 0.05, 0.55]
    correct = [True, False, False, False, True]
    # ten bins, one score each: |1-.95| + |0-.85| + .15 + .05 + |1-.55|, over 5
    assert evaluate.expected_calibration_error(scores, correct) == pytest.approx(0.31)
    # two bins: [0, .5) holds .15 .05 (mean .1, accuracy 0) -> .1 * 2/5;
    # [.5, 1] holds .95 .85 .55 (mean .78333, accuracy 2/3) -> .11667 * 3/5
    ece = evaluate.expected_calibration_error(scores, correct, n_bins=2)
    assert ece == pytest.approx(0.04 + 0.07)
    assert evaluate.expected_calibration_error([1.0], [True]) == 0.0  # top bin
    assert math.isnan(evaluate.expected_calibration_error([math.nan], [False]))
    with pytest.raises(ValueError, match="outside"):
        evaluate.expected_calibration_error([1.5], [True])


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
