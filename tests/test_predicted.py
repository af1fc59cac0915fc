import math

import numpy as np
import pytest

from peptrm import masses, predicted

needs_ms2pip = pytest.mark.skipif(
    not predicted.available(), reason=f"ms2pip {predicted.VERSION} is not installed"
)


def test_agreement_of_a_hand_worked_ladder():
    # predicted (linear) b1 0.36, b2 0.16, y of cleavage 1 0.64, of cleavage 2 0;
    # sqrt: 0.6 0.4 | 0.8 0. Observed weights: b1 0.3, b2 none | 0.4 0.5.
    # A second candidate without a prediction, and a third predicted for a
    # different length, read nan; the first reads as it would alone.
    predicted_by = (np.array([0.36, 0.16]), np.array([0.64, 0.0]))
    observed = (np.array([0.3, 0.0]), np.array([0.4, 0.5]))
    many = predicted.agreement(
        [predicted_by, None, predicted_by], [observed, observed, (np.ones(3),) * 2]
    )
    f = {name: values[0] for name, values in many.items()}
    assert all(np.isnan(values[1:]).all() for values in many.values())
    # cosine: (0.18 + 0.32) / (sqrt(1.16) * sqrt(0.5)) = 0.5 / 0.761577
    assert f["ms2pip_cosine"] == pytest.approx(0.656532, abs=1e-6)
    # Pearson: deviations (.15 -.05 .35 -.45) and (0 -.3 .1 .2): -0.04 / sqrt(.35 * .14)
    assert f["ms2pip_pearson"] == pytest.approx(-0.180702, abs=1e-6)
    # Spearman: ranks (3 2 4 1) and (2 1 3 4): -1 / sqrt(5 * 5)
    assert f["ms2pip_spearman"] == pytest.approx(-0.2, abs=1e-9)
    assert f["ms2pip_top_found"] == pytest.approx(0.75)  # 3 of the 4 ions
    assert f["ms2pip_found_share"] == pytest.approx(1.0 / 1.16)  # b2's 0.16 missed
    assert f["ms2pip_max_missing"] == pytest.approx(0.5)  # b2 0.4 against y 0.8


def test_log2_intensities_become_linear_by_cleavage():
    # ms2pip writes log2(I + 0.001) per ion number: b1 b2, y1 y2
    b, y = predicted._by_cleavage(
        {"b": np.log2([0.5 + 0.001, 0.001]), "y": np.log2([0.25 + 0.001, 0.25 + 0.001])}
    )
    assert b == pytest.approx([0.5, 0.0]) and y == pytest.approx([0.25, 0.25])
    _, y = predicted._by_cleavage(
        {"b": np.log2([1.001, 1.001]), "y": np.log2([1.001, 0.001])}
    )
    assert y == pytest.approx([0.0, 1 / 3])  # y1 pairs with the last cleavage


@needs_ms2pip
def test_every_modification_is_predicted_offline_and_short_peptides_are_not():
    # Every label reaches ms2pip as a mass delta, so nothing is looked up online
    peptides = [
        "+43.006-17.027C+57.021M+15.995N+0.984Q+0.984K",
        "+42.011PEPTLDEK",
        "+43.006AAAK",
        "-17.027QLLR",
        "MKR",  # 3 residues: ms2pip refuses it
    ]
    out = predicted.predict(peptides, charge=2)
    lengths = [len(masses.strip_modifications(p)) - 1 for p in peptides[:4]]
    for (b, y), n in zip(out[:4], lengths, strict=True):
        assert len(b) == len(y) == n
        assert b.sum() + y.sum() == pytest.approx(1.0) and b.min() >= 0
    assert out[4] is None


@needs_ms2pip
def test_tryptic_y_ions_outweigh_b_ions_in_hcd():
    # HCD: with a C-terminal K or R the y series carries most of the intensity
    for b, y in predicted.predict(["PEPTLDEK", "LGEYGFQNALLVR", "AEFVEVTK"], 2):
        assert y.sum() > 2 * b.sum()


@needs_ms2pip
def test_the_proline_effect_puts_the_tallest_ion_before_proline():
    # HCD cleaves most readily N-terminal to proline: in PEPTLDEK the tallest ion is
    # y6 (PTLDEK), the y ion of the second cleavage (E|P)
    ((b, y),) = predicted.predict(["PEPTLDEK"], 2)
    assert np.argmax(y) == 1 and y[1] > b.max()


def test_ranks_share_ties_and_spearman_reads_them():
    # unmatched ions all weigh 0: they tie for the lowest ranks
    observed = np.array([0.0, 0.5, 0.0, 0.2, 0.0])
    assert predicted._ranks(observed).tolist() == [2.0, 5.0, 2.0, 4.0, 2.0]
    assert predicted._ranks(np.array([3.0, 1.0, 2.0])).tolist() == [3.0, 1.0, 2.0]
    # rows ranked at once, each padded with +inf, rank their entries as alone
    rows = predicted._ranks(
        np.array([[0.0, 0.5, 0.0, 0.2, 0.0], [3, 1, 2, np.inf, np.inf]])
    )
    assert rows[0].tolist() == [2.0, 5.0, 2.0, 4.0, 2.0]
    assert rows[1, :3].tolist() == [3.0, 1.0, 2.0]
    a, b = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 9.0])
    assert predicted._pearson(a, b) == pytest.approx(np.corrcoef(a, b)[0, 1])
    assert math.isnan(predicted._pearson(np.ones(4), b))


def _every_token_peptides():
    """Peptides holding every vocabulary token, N-terminal ones included."""
    ends = masses.N_TERMINAL_MODIFICATIONS
    residues = [t for t in masses.VOCAB[1:] if t not in ends]
    return [[r, "A", "G", "K"] for r in residues] + [
        [n, "P", "E", "C+57.021", "K"] for n in ends
    ]


@needs_ms2pip
@pytest.mark.parametrize("charge", [1, 2, 3])
def test_assembled_peptidoforms_are_what_parsing_their_text_gives(charge):
    from psm_utils import Peptidoform

    for peptide in _every_token_peptides():
        ours = predicted.peptidoform(peptide, charge)
        parsed = Peptidoform(f"{masses.to_mass_proforma(peptide)}/{charge}")
        assert ours == parsed and ours.parsed_sequence == parsed.parsed_sequence
        mine, theirs = dict(ours.properties), dict(parsed.properties)
        a, b = mine.pop("charge_state"), theirs.pop("charge_state")  # no __eq__
        assert mine == theirs and (a.charge, a.adducts) == (b.charge, b.adducts)


@needs_ms2pip
def test_predictions_from_assembled_peptidoforms_equal_those_from_text():
    from ms2pip.core import predict_batch
    from psm_utils import PSM, PSMList

    peptides = _every_token_peptides()
    text = PSMList(
        psm_list=[
            PSM(peptidoform=f"{masses.to_mass_proforma(p)}/2", spectrum_id=str(i))
            for i, p in enumerate(peptides)
        ]
    )
    expected = predict_batch(text, model=predicted.MODEL, processes=1)
    found = predicted.predict(peptides, 2)
    for result, intensities in zip(expected, found, strict=True):
        b, y = predicted._by_cleavage(result.predicted_intensity)
        np.testing.assert_array_equal(intensities[0], b)
        np.testing.assert_array_equal(intensities[1], y)
