import math

import pytest

from peptrm import metrics

T, F = True, False


# --- residue matching (expected values worked out by hand from residue masses) ---


def test_i_and_l_match_everywhere():
    matches, correct = metrics.aa_match("PEPTLDE", "PEPTIDE")
    assert matches.tolist() == [T] * 7
    assert correct
    assert metrics.same_peptide("PEPTLDE", "PEPTIDE")


def test_n_terminal_swap_of_equal_sum():
    # G (57.02) then A (71.04) against A then G. From the N-term, pred G is lighter
    # than true A, so it is left unaligned; pred A then aligns with true G at equal
    # prefix mass (128.06) and mismatches; PEPTIDE matches. From the C-term nothing
    # is left after the last N-terminal match. Casanovo's matcher also gives 7/9.
    matches, correct = metrics.aa_match("GAPEPTIDE", "AGPEPTIDE")
    assert matches.tolist() == [F, F, T, T, T, T, T, T, T]
    assert not correct


def test_middle_and_c_terminal_swaps():
    matches, _ = metrics.aa_match("PEPGATIDE", "PEPAGTIDE")
    assert matches.tolist() == [T, T, T, F, F, T, T, T, T]
    # At the C-term the N-terminal pass matches PEPTIDE and the C-terminal pass
    # aligns pred G with true A at equal suffix mass: both swapped residues miss.
    matches, _ = metrics.aa_match("PEPTIDEGA", "PEPTIDEAG")
    assert matches.tolist() == [T, T, T, T, T, T, T, F, F]


def test_k_and_q_match_at_a_tenth_of_a_dalton():
    # K 128.09496 vs Q 128.05858: 0.036 Da apart, so by the Casanovo convention the
    # peptide is correct; only the exact string comparison tells them apart.
    matches, correct = metrics.aa_match("PEPKIDE", "PEPQLDE")
    assert matches.all() and correct
    assert not metrics.same_peptide("PEPKIDE", "PEPQLDE")
    matches, correct = metrics.aa_match("PEPKIDE", "PEPQLDE", tol_da=0.01)
    assert matches.tolist() == [T, T, T, F, T, T, T]
    assert not correct


def test_substitution_of_different_mass_costs_one_residue():
    # F 147.068 vs M 131.040: the N-terminal pass matches PEPT, then the prefix
    # masses stay 16 Da apart; the C-terminal pass matches E and D.
    matches, correct = metrics.aa_match("PEPTFDE", "PEPTMDE")
    assert matches.tolist() == [T, T, T, T, F, T, T]
    assert not correct


def test_deleted_residue():
    matches, correct = metrics.aa_match("PEPTDE", "PEPTIDE")
    assert matches.tolist() == [T] * 6  # every predicted residue is right
    assert not correct  # but one true residue is missing


def test_deletion_after_a_coincidental_alignment():
    # The label has an extra I. From the N-term, pred Y L aligns with true I Y
    # (Y + L = I + Y in mass) and pred L with true L, then the masses part for
    # good. From the C-term everything from pred Y on matches. The best split
    # (G D from the N-term, the rest from the C-term) matches every predicted
    # residue; stopping the C-terminal pass at the last N-terminal match would
    # lose Y and L.
    matches, correct = metrics.aa_match("GDYLLADYQC+57.021K", "GDIYLLADYQC+57.021K")
    assert matches.tolist() == [T] * 11
    assert not correct


def test_first_residue_missing():
    # pred is the label without its first S; from the N-term A+S aligns with S+A
    matches, _ = metrics.aa_match("ASSDTSEELNSQ+0.984DSPPK", "SASSDTSEELNSQ+0.984DSPPK")
    assert matches.tolist() == [T] * 17


def test_n_terminal_modification_is_its_own_token():
    matches, correct = metrics.aa_match("+42.011PEPTIDE", "PEPTIDE")
    assert matches.tolist() == [F] + [T] * 7
    assert not correct
    matches, correct = metrics.aa_match("PEPTIDE", "+42.011PEPTIDE")
    assert matches.tolist() == [T] * 7
    assert not correct
    # acetyl 42.0106 vs carbamyl 43.0058: 0.995 Da apart, never aligned
    matches, _ = metrics.aa_match("+43.006PEPTIDE", "+42.011PEPTIDE")
    assert matches.tolist() == [F] + [T] * 7
    assert metrics.aa_match("+42.011PEPTLDE", "+42.011PEPTIDE")[1]


def test_mass_equal_modified_residues_match():
    # N+0.984 is D by composition; M+15.995 (147.0354) vs F (147.0684) is 0.033 Da
    assert metrics.aa_match("PEPTN+0.984E", "PEPTDE")[1]
    assert metrics.aa_match("M+15.995K", "FK")[1]


def test_empty_prediction_matches_nothing():
    matches, correct = metrics.aa_match("", "PEPTIDE")
    assert matches.shape == (0,)
    assert not correct


def test_batch_counts_and_ratios():
    batch = metrics.aa_match_batch(
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
    batch = metrics.aa_match_batch([""], ["PEPTIDE"])
    assert math.isnan(batch.aa_precision)
    assert math.isnan(batch.peptide_precision)
    assert batch.aa_recall == 0.0


# --- precision-coverage and calibration ---


def test_precision_coverage_ranks_by_score():
    # in score order 0.9 0.8 0.7 0.6 the flags are 1 0 1 1
    coverage, precision = metrics.precision_coverage(
        [0.6, 0.9, 0.7, 0.8], [True, True, True, False]
    )
    assert coverage.tolist() == [0.25, 0.5, 0.75, 1.0]
    assert precision == pytest.approx([1, 1 / 2, 2 / 3, 3 / 4])
    area = metrics.area_under_precision_coverage(coverage, precision)
    assert area == pytest.approx((1 + 1 / 2 + 2 / 3 + 3 / 4) / 4)  # 0.729167


def test_precision_coverage_ties_and_missing_predictions():
    # the tie at 0.9 gives one point; the nan spectrum is never covered
    coverage, precision = metrics.precision_coverage(
        [0.9, 0.9, 0.5, math.nan], [True, False, True, False]
    )
    assert coverage.tolist() == [0.5, 0.75]
    assert precision == pytest.approx([1 / 2, 2 / 3])
    area = metrics.area_under_precision_coverage(coverage, precision)
    assert area == pytest.approx(0.5 * 1 / 2 + 0.25 * 2 / 3)


def test_expected_calibration_error():
    scores = [0.95, 0.85, 0.15, 0.05, 0.55]
    correct = [True, False, False, False, True]
    # ten bins, one score each: |1-.95| + |0-.85| + .15 + .05 + |1-.55|, over 5
    assert metrics.expected_calibration_error(scores, correct) == pytest.approx(0.31)
    # two bins: [0, .5) holds .15 .05 (mean .1, accuracy 0) -> .1 * 2/5;
    # [.5, 1] holds .95 .85 .55 (mean .78333, accuracy 2/3) -> .11667 * 3/5
    ece = metrics.expected_calibration_error(scores, correct, n_bins=2)
    assert ece == pytest.approx(0.04 + 0.07)
    assert metrics.expected_calibration_error([1.0], [True]) == 0.0  # top bin
    assert math.isnan(metrics.expected_calibration_error([math.nan], [False]))
    with pytest.raises(ValueError, match="outside"):
        metrics.expected_calibration_error([1.5], [True])
